"""Low-level reading of raw files: JSON lines frame by frame in bounded memory (decoded in bulk,
bad lines found and counted), csv/tsv/parquet tables, small files whole."""

from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mmrec.ingest.errors import BadLines, DataError, Truncation
from mmrec.ingest.lines import LineBlocks, LineScan, require_file

_SMALL = 64  # lines checked one by one when a frame does not decode in bulk

OPTIONAL = ("rating", "review")


def read_bytes(path: str | Path) -> bytes:
    """Content of ``path``, gunzipped if it ends in ``.gz``; clear errors when it cannot be read
    (a truncated gzip file is an error).

    For small files (tables, item text); line files of any size are read by ``LineBlocks``.
    """
    data, cut = read_complete_lines(path)
    if cut is not None:
        raise DataError(cut.error(option=False))
    return data


def read_complete_lines(path: str | Path) -> tuple[bytes, Truncation | None]:
    """Content of ``path`` (gunzipped if it ends in ``.gz``) and, for a truncated gzip file,
    where it breaks off (the content then holds its complete lines only)."""
    path = Path(path)
    require_file(path)
    if path.suffix != ".gz":
        return path.read_bytes(), None
    blocks = LineBlocks(path)
    data = b"".join(b.data for b in blocks)
    return data, blocks.truncation()


#: What ``json_line_frames`` runs on each decoded frame, in its worker threads: the frame and
#: a ``BadLines`` for the bad rows it finds -> the frame to yield.
Transform = Callable[[pl.DataFrame, BadLines], pl.DataFrame]


def json_line_frames(
    path: str | Path,
    keys: dict[str, str],
    bad: BadLines,
    *,
    typed: dict[str, pl.DataType] | None = None,
    transform: Transform | None = None,
    allow_truncated: bool = False,
) -> Iterator[pl.DataFrame]:
    """Selected keys of a JSON-lines file (``.gz`` or plain), frame by frame, in bounded memory.

    Each frame has one column per ``keys`` entry plus ``line`` (1-based line number). Values are
    read as ``typed`` says (our column -> dtype; the others as text, numbers too); a frame that
    does not fit those types is read again as text, so that the caller can report non-numeric
    values line by line. The lines of a frame are decoded in bulk (polars); when that fails, a
    Python loop finds the malformed lines (counted in ``bad`` as ``malformed``) and polars
    decodes the rest. Blank lines are skipped. A truncated gzip file yields its complete lines,
    then raises the DataError that says where it breaks off; with ``allow_truncated`` its tail
    counts as one ``truncated`` bad line instead (``bad.truncated`` says where it ends).

    Two threads decode frames (and run ``transform`` on them) while polars scans the next
    lines; frames come out in file order and the bad lines are booked in file order.

    Args:
        path: ``.json``/``.jsonl`` file, optionally ``.gz``.
        keys: Output column -> JSON key.
        bad: Collects the bad lines of this file; its ``total`` counts the data lines.
        typed: Output column -> dtype tried first (e.g. Int64 timestamps).
        transform: Applied to each decoded frame in the worker threads (e.g. checks and
            conversions that count bad rows in the ``BadLines`` they get).
        allow_truncated: Keep the complete lines of a truncated gzip file.
    """
    path = Path(path)
    text = {key: pl.String for key in dict.fromkeys(keys.values())}
    first = dict(text)
    for name, dtype in (typed or {}).items():
        if name in keys:
            first[keys[name]] = dtype
    out = [pl.col(key).alias(name) for name, key in keys.items()]

    def work(frame: pl.DataFrame) -> tuple[Decoded, pl.DataFrame, BadLines]:
        decoded = decode_json_lines(frame, (first, text))
        rows, found = decoded.rows.select(*out, "line"), BadLines(str(path))
        if transform is not None and rows.height:
            rows = transform(rows, found)
        return decoded, rows, found

    lines = LineScan(path)
    with ThreadPoolExecutor(2) as pool:
        pending: deque = deque()
        for frame in lines:
            pending.append(pool.submit(work, frame))
            while pending and (len(pending) > 4 or pending[0].done()):
                yield from _book(*pending.popleft().result(), bad)
        while pending:
            yield from _book(*pending.popleft().result(), bad)
    if lines.truncation is not None:
        bad.truncate(lines.truncation, "truncated", allow_truncated)
    elif bad.total == 0:
        raise DataError(
            f"{path}: the file is empty (no data lines); check the path or download it again."
        )


def _book(
    decoded: Decoded, rows: pl.DataFrame, found: BadLines, bad: BadLines
) -> Iterator[pl.DataFrame]:
    """Books one frame's lines and bad lines (in line order), then yields its rows."""
    bad.total += decoded.lines
    examples = sorted([(line, message) for _, line, message in decoded.bad] + found.examples)
    bad.examples.extend(examples[: max(0, 5 - len(bad.examples))])
    bad.counts.update(reason for reason, _, _ in decoded.bad)
    bad.counts.update(found.counts)
    if rows.height:
        yield rows


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames of one file (their dtypes may differ: a text fallback) as one frame."""
    if len(frames) == 1:
        return frames[0]
    return pl.concat(frames, how="vertical_relaxed")


@dataclass
class Decoded:
    """A batch of decoded JSON lines: the rows (with ``line``), the data lines it had, and its
    bad lines as ``(reason, line, message)``."""

    rows: pl.DataFrame
    lines: int
    bad: list[tuple[str, int, str]]


def decode_json_lines(frame: pl.DataFrame, schemas: tuple[dict, ...]) -> Decoded:
    """``frame``'s ``text`` lines decoded as JSON objects with the first of ``schemas`` (key ->
    dtype) that fits every line, plus ``line``. When none fits, the frame is decoded with the
    last schema (values that are lists or objects become their JSON text) in halves until the
    halves decode or are small; the lines of a small half that does not decode are parsed one
    by one and the malformed ones reported (``malformed``): not JSON, not an object, nested
    deeper than the parsers go, or JSON that polars cannot read (``NaN``, ``1e400``). Empty
    lines and lines of spaces are blank, not data."""
    if frame["text"].null_count():
        frame = frame.filter(pl.col("text").is_not_null())
    for schema in schemas:
        try:
            rows = frame["text"].str.json_decode(pl.Struct(schema))
        except pl.exceptions.PolarsError:
            continue
        # a line "null" decodes to null: not an object; lines of spaces only decode to no row
        if rows.null_count() == 0 and len(rows) == frame.height:
            return Decoded(rows.struct.unnest().with_columns(frame["line"]), frame.height, [])
        break
    if frame.height > _SMALL:
        half = frame.height // 2
        parts = [decode_json_lines(p, schemas[-1:]) for p in (frame[:half], frame[half:])]
        rows = pl.concat([p.rows for p in parts], how="vertical_relaxed")
        return Decoded(rows, sum(p.lines for p in parts), [b for p in parts for b in p.bad])
    good, numbers, bad = [], [], []
    for number, line in zip(frame["line"], frame["text"], strict=True):
        if not line.strip():
            continue
        err = json_object_error(line)
        if err is None:
            good.append(line)
            numbers.append(number)
        else:
            bad.append(("malformed", number, err))
    text = schemas[-1]
    lines = len(good) + len(bad)
    rows = _read_objects(good, numbers, text, bad)
    return Decoded(rows, lines, sorted(bad, key=lambda b: b[1]))


def json_object_error(line: str) -> str | None:
    """Why ``line`` is not one JSON object (None when it is), as Python's json sees it: not
    JSON (``NaN`` and ``Infinity`` included, which polars rejects), not an object, or nested
    deeper than the parser goes (a ``RecursionError``, caught here)."""
    try:
        value = json.loads(line, parse_constant=_no_constant)
    except ValueError as exc:
        return f"malformed JSON ({exc})"
    except RecursionError:
        return "malformed JSON (nested deeper than the JSON parser goes)"
    return None if isinstance(value, dict) else "not a JSON object"


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _read_objects(
    good: list[str], numbers: list[int], schema: dict, bad: list[tuple[str, int, str]]
) -> pl.DataFrame:
    """Rows of the JSON object lines ``good`` (polars, ``schema``), plus ``line``; a line that
    polars cannot read although Python's json can (a number out of range, nesting past polars'
    limit) is found line by line and added to ``bad`` as ``malformed``."""
    empty = pl.DataFrame(schema={**schema, "line": pl.UInt64})
    if not good:
        return empty
    try:
        rows = pl.read_ndjson(io.BytesIO("\n".join(good).encode()), schema=schema)
    except pl.exceptions.PolarsError as exc:
        if len(good) == 1:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            bad.append(("malformed", numbers[0], f"malformed JSON ({first})"))
            return empty
        parts = [_read_objects([g], [n], schema, bad) for g, n in zip(good, numbers, strict=True)]
        return pl.concat(parts, how="vertical_relaxed")
    return rows.with_columns(pl.Series("line", numbers, dtype=pl.UInt64))


def read_delimited(
    path: str | Path,
    columns: dict[str, str],
    *,
    optional: tuple[str, ...] = OPTIONAL,
    bad: BadLines | None = None,
    allow_truncated: bool = False,
) -> pl.DataFrame:
    """Reads mapped columns of a csv/tsv (optionally ``.gz``) or parquet file, plus ``line``.

    A truncated ``.gz`` file is a DataError that says where it breaks off; with
    ``allow_truncated`` (and ``bad``) its complete lines are read and its tail is one
    ``truncated`` bad line in ``bad``.

    Args:
        path: The file; ``.tsv`` is tab-separated, ``.csv``/``.txt`` comma-separated.
        columns: Our column name -> the file's column name.
        optional: Our columns that may be absent from the file (then null).
        bad: Where the tail of a truncated file is booked.
        allow_truncated: Keep the complete lines of a truncated gzip file.
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
            source = path
            if path.suffix == ".gz":
                data, cut = read_complete_lines(path)
                if cut is not None:
                    if bad is None:
                        raise DataError(cut.error(option=False))
                    bad.truncate(cut, "truncated", allow_truncated)
                source = io.BytesIO(data)
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
