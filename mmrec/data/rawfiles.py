"""Low-level reading of raw files: gzip with clear errors, JSON lines, csv/tsv/parquet tables."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path

import polars as pl

from mmrec.data.errors import BadLines, DataError

OPTIONAL = ("rating", "review")


def read_bytes(path: str | Path) -> bytes:
    """Content of ``path``, gunzipped if it ends in ``.gz``; clear errors when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; check the path (or leave it unset to download it)"
        )
    if path.suffix != ".gz":
        return path.read_bytes()
    chunks: list[bytes] = []
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                chunks.append(chunk)
    except EOFError:
        lines = sum(c.count(b"\n") for c in chunks)
        raise DataError(
            f"{path}: truncated gzip file, it ends abruptly after line {lines}; the download was "
            "probably interrupted: delete the file and download it again."
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        raise DataError(f"{path}: not a valid gzip file ({err}); download it again.") from None
    return b"".join(chunks)


def _require_data(path: Path, data: bytes) -> None:
    if not data.strip():
        raise DataError(
            f"{path}: the file is empty (no data lines); check the path or download it again."
        )


def read_json_lines(path: str | Path, keys: dict[str, str], bad: BadLines) -> pl.DataFrame:
    """Reads selected keys of a JSON-lines file as strings, plus ``line`` (1-based line number).

    Fast path: polars ``read_ndjson``. When polars rejects the file, a Python loop finds the
    malformed lines (counted in ``bad`` as ``malformed``) and polars reads the rest. Blank lines
    are ignored. Values are read as text (numbers too) so that the caller can report
    non-numeric values line by line.

    Args:
        path: ``.json``/``.jsonl`` file, optionally ``.gz``.
        keys: Output column -> JSON key.
        bad: Collects the bad lines of this file; its ``total`` is set to the data lines.
    """
    path = Path(path)
    data = read_bytes(path)
    _require_data(path, data)
    schema = {key: pl.String for key in dict.fromkeys(keys.values())}
    rename = {key: name for name, key in keys.items()}
    simple = b"\n\n" not in data and b"\n\r\n" not in data and not data[:1].isspace()
    frame = None
    if simple:
        try:
            frame = pl.read_ndjson(io.BytesIO(data), schema=schema)
            frame = frame.with_row_index("line", offset=1)
        except pl.exceptions.PolarsError:
            frame = None
    if frame is None:
        good, numbers = [], []
        for number, line in enumerate(data.split(b"\n"), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                ok = isinstance(json.loads(line), dict)
                err = "not a JSON object"
            except ValueError as exc:
                ok, err = False, f"malformed JSON ({exc})"
            if ok:
                good.append(line)
                numbers.append(number)
            else:
                bad.add("malformed", number, err)
        bad.total = len(good) + bad.counts["malformed"]
        try:
            frame = (
                pl.read_ndjson(io.BytesIO(b"\n".join(good)), schema=schema)
                if good
                else pl.DataFrame(schema=schema)
            )
        except pl.exceptions.PolarsError as exc:
            raise DataError(f"{path}: cannot read the JSON lines ({exc})") from None
        frame = frame.with_columns(pl.Series("line", numbers, dtype=pl.UInt32))
    else:
        bad.total = frame.height
    return frame.select(pl.col(k).alias(rename[k]) for k in schema).with_columns(frame["line"])


def read_delimited(
    path: str | Path, columns: dict[str, str], *, optional: tuple[str, ...] = OPTIONAL
) -> pl.DataFrame:
    """Reads mapped columns of a csv/tsv (optionally ``.gz``) or parquet file, plus ``line``.

    Args:
        path: The file; ``.tsv`` is tab-separated, ``.csv``/``.txt`` comma-separated.
        columns: Our column name -> the file's column name.
        optional: Our columns that may be absent from the file (then null).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    try:
        if kind == ".parquet":
            available = pl.read_parquet_schema(path)
            source = path
        else:
            source = io.BytesIO(read_bytes(path)) if path.suffix == ".gz" else path
            sep = "\t" if kind == ".tsv" else ","
            available = pl.read_csv(source, n_rows=0, separator=sep, infer_schema=False).columns
    except pl.exceptions.NoDataError:
        raise DataError(
            f"{path}: the file is empty (no header, no rows); check the path."
        ) from None
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot read the table ({exc})") from None
    wanted = {
        ours: theirs
        for ours, theirs in columns.items()
        if theirs in available or ours not in optional
    }
    missing = {ours: theirs for ours, theirs in wanted.items() if theirs not in available}
    if missing:
        what = ", ".join(f"{ours}={theirs!r}" for ours, theirs in missing.items())
        raise DataError(
            f"{path}: column(s) {what} of the column mapping not found; the file's columns are "
            f"{list(available)}. Fix --columns (our name -> file column), e.g. "
            '\'{"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime"}\'.'
        )
    try:
        if kind == ".parquet":
            frame = pl.read_parquet(source, columns=list(dict.fromkeys(wanted.values())))
        else:
            if isinstance(source, io.BytesIO):
                source.seek(0)
            frame = _read_csv(
                source,
                sep,
                list(dict.fromkeys(wanted.values())),
                [wanted[c] for c in ("user_id", "item_id", "review") if c in wanted],
            )
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot read the table ({str(exc).splitlines()[0]})") from None
    if frame.height == 0:
        raise DataError(f"{path}: the table has a header but no rows; check the path.")
    offset = 1 if kind == ".parquet" else 2  # csv: line 1 is the header
    return frame.select(
        pl.col(theirs).alias(ours) for ours, theirs in wanted.items()
    ).with_row_index("line", offset=offset)


def _read_csv(source, sep: str, columns: list[str], text: list[str]) -> pl.DataFrame:
    """Reads with inferred numeric columns (fast); when a value does not parse (a bad rating or
    timestamp somewhere), reads everything as text so that the bad lines can be reported."""
    try:
        return pl.read_csv(
            source,
            separator=sep,
            columns=columns,
            infer_schema_length=10000,
            schema_overrides=dict.fromkeys(text, pl.String),
        )
    except pl.exceptions.PolarsError:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        return pl.read_csv(source, separator=sep, columns=columns, infer_schema=False)
