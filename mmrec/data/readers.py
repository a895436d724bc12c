"""Readers of raw interaction files: Amazon 2014/2018/2023 reviews, 2023 benchmark CSVs, tabular
files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mmrec.data.batch import EventField, stored_fields
from mmrec.data.errors import BadLines, DataError
from mmrec.data.rawfiles import read_bytes, read_delimited, read_json_lines

__all__ = [
    "RawInteractions",
    "normalize",
    "read_bytes",
    "JsonReviewsReader",
    "TableReader",
    "BenchmarkCsvReader",
    "Amazon2023Reader",
]

#: Columns every reader returns, in this order (``row`` is added by prepare), then the
#: ``extra_fields()`` columns.
REQUIRED = ("user_id", "item_id", "timestamp")
OPTIONAL = ("rating", "review")
#: Per-event columns the readers parse themselves (``item_idx`` comes from ``item_id``).
_PARSED = ("item_idx", "timestamp", "rating")


def extra_fields() -> list[EventField]:
    """Declared per-event fields (``mmrec.data.batch.EVENT_FIELDS``) beyond the parsed ones:
    their columns are read under their own name (tabular files: mappable in ``columns``) as
    numbers, null where absent or not a number."""
    return [f for f in stored_fields() if f.column not in _PARSED]


@dataclass
class RawInteractions:
    """What a reader returns.

    Attributes:
        frame: ``user_id`` str, ``item_id`` str, ``timestamp`` int64 unix seconds, ``rating``
            float32 (null if absent), ``review`` str (null if absent), the ``extra_fields()``
            columns; rows in file order.
        input_rows: Data lines/rows read, bad ones included.
        dropped: Rows skipped while reading, by reason (``malformed``, ``missing_field``...).
    """

    frame: pl.DataFrame
    input_rows: int
    dropped: dict[str, int] = field(default_factory=dict)


def normalize(frame: pl.DataFrame, bad: BadLines) -> pl.DataFrame:
    """Checks and converts a raw frame (REQUIRED/OPTIONAL columns + ``line``) to the reader output.

    Rows with a missing user/item/timestamp (``missing_field``), an unreadable timestamp
    (``bad_timestamp``) or a non-numeric rating (``bad_rating``) are counted in ``bad`` and
    removed. Timestamps become unix seconds; milliseconds (values above 1e11) are detected.
    """
    for name in ("user_id", "item_id", "review"):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.String).alias(name))
        elif frame.schema[name] != pl.String:
            frame = frame.with_columns(pl.col(name).cast(pl.String))
    frame = _seconds(frame)
    frame = _rating(frame)
    flags = {
        "user_id": pl.col("user_id").is_null() | (pl.col("user_id") == ""),
        "item_id": pl.col("item_id").is_null() | (pl.col("item_id") == ""),
        "timestamp": pl.col("_ts_raw").is_null(),
    }
    missing = flags["user_id"] | flags["item_id"] | flags["timestamp"]
    bad_ts = ~missing & pl.col("timestamp").is_null()
    bad_rating = (
        ~missing & ~bad_ts & pl.col("_rating_raw").is_not_null() & pl.col("rating").is_null()
    )
    frame = frame.with_columns(
        missing.alias("_missing"), bad_ts.alias("_bad_ts"), bad_rating.alias("_bad_rating")
    )
    counts = frame.select(pl.col("_missing", "_bad_ts", "_bad_rating").sum()).row(0)
    if sum(counts):
        offenders = frame.filter(
            pl.col("_missing") | pl.col("_bad_ts") | pl.col("_bad_rating")
        ).head(5)
        offenders = offenders.with_columns(
            pl.concat_str(
                [pl.when(expr).then(pl.lit(name)) for name, expr in flags.items()],
                separator=", ",
                ignore_nulls=True,
            ).alias("_which"),
            pl.col("_ts_raw", "_rating_raw").cast(pl.String),
        )
        for row in offenders.iter_rows(named=True):
            if row["_missing"]:
                bad.examples.append((row["line"], f"missing required field(s) {row['_which']}"))
            elif row["_bad_ts"]:
                bad.examples.append(
                    (row["line"], f"timestamp {row['_ts_raw']!r} is neither a number nor a date")
                )
            else:
                bad.examples.append((row["line"], f"rating {row['_rating_raw']!r} is not a number"))
        del bad.examples[5:]
        for reason, count in zip(
            ("missing_field", "bad_timestamp", "bad_rating"), counts, strict=True
        ):
            if count:
                bad.counts[reason] += count
        frame = frame.filter(~(pl.col("_missing") | pl.col("_bad_ts") | pl.col("_bad_rating")))
    extra = [
        pl.col(f.column).cast(f.polars_dtype, strict=False)
        if f.column in frame.columns
        else pl.lit(None, f.polars_dtype).alias(f.column)
        for f in extra_fields()
    ]
    return frame.select(
        "user_id",
        "item_id",
        pl.col("timestamp").cast(pl.Int64),
        pl.col("rating").cast(pl.Float32),
        "review",
        *extra,
    )


def _seconds(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds ``timestamp`` in unix seconds (numbers, ms numbers or ISO dates) and ``_ts_raw``."""
    if "timestamp" not in frame.columns:
        return frame.with_columns(
            pl.lit(None, pl.Float64).alias("timestamp"), pl.lit(None, pl.String).alias("_ts_raw")
        )
    dtype = frame.schema["timestamp"]
    frame = frame.rename({"timestamp": "_ts_raw"})
    raw = pl.col("_ts_raw")
    if dtype == pl.String:
        raw = pl.when(raw.str.len_bytes() > 0).then(raw)
        frame = frame.with_columns(raw.alias("_ts_raw"))
        frame = frame.with_columns(
            pl.col("_ts_raw").cast(pl.Float64, strict=False).alias("timestamp")
        )
        numeric, present = frame.select(
            pl.col("timestamp").is_not_null().sum(), pl.col("_ts_raw").is_not_null().sum()
        ).row(0)
        if numeric * 2 < present:  # mostly dates
            dates = pl.col("_ts_raw").str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s")
            frame = frame.with_columns(dates.cast(pl.Float64).alias("timestamp"))
    elif dtype.is_temporal():
        frame = frame.with_columns(
            raw.cast(pl.Datetime("us")).dt.epoch("s").cast(pl.Float64).alias("timestamp")
        )
    else:
        frame = frame.with_columns(raw.cast(pl.Float64, strict=False).alias("timestamp"))
    value = pl.col("timestamp").fill_nan(None)
    is_ms = (frame.select(value.abs().max()).item() or 0) > 1e11
    return frame.with_columns(((value // 1000) if is_ms else value.floor()).alias("timestamp"))


def _rating(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds ``rating`` (float, null when absent or not a number) and ``_rating_raw``."""
    if "rating" not in frame.columns:
        return frame.with_columns(
            pl.lit(None, pl.Float64).alias("rating"), pl.lit(None, pl.String).alias("_rating_raw")
        )
    raw = pl.col("rating")
    if frame.schema["rating"] == pl.String:
        raw = raw.str.strip_chars()
        raw = pl.when(raw.str.len_bytes() > 0).then(raw)
    return frame.with_columns(raw.alias("_rating_raw")).with_columns(
        pl.col("_rating_raw").cast(pl.Float64, strict=False).fill_nan(None).alias("rating")
    )


class JsonReviewsReader:
    """Reads official review JSON-lines files (one JSON object a line, ``.gz`` or plain).

    Args:
        keys: Our column -> JSON key, e.g. ``{"user_id": "reviewerID", "item_id": "asin", ...}``.
    """

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys

    def read(self, paths: list[Path], max_bad_fraction: float) -> RawInteractions:
        frames, total, dropped = [], 0, {}
        for path in paths:
            bad = BadLines(str(path))
            frame = normalize(read_json_lines(path, self.keys, bad), bad)
            bad.check(max_bad_fraction)
            frames.append(frame)
            total += bad.total
            for k, v in bad.counts.items():
                dropped[k] = dropped.get(k, 0) + v
        return RawInteractions(pl.concat(frames), total, dropped)


class TableReader:
    """Reads csv/tsv/parquet interaction tables through a column mapping.

    Args:
        columns: Our column (``user_id``, ``item_id``, ``timestamp``, ``rating``, ``review``,
            ``extra_fields()`` columns) -> the file's column. Unmapped optional columns are
            looked up under our own name.
    """

    def __init__(self, columns: dict[str, str] | None = None) -> None:
        self.optional = (*OPTIONAL, *(f.column for f in extra_fields()))
        unknown = set(columns or {}) - set(REQUIRED) - set(self.optional)
        if unknown:
            raise DataError(
                f"--columns names unknown field(s) {sorted(unknown)}; the fields are "
                f"{list(REQUIRED + self.optional)} (our name -> the file's column)."
            )
        self.columns = {c: c for c in (*REQUIRED, *self.optional)} | dict(columns or {})

    def order(self, paths: list[Path]) -> list[Path]:
        """Files in the order their rows are concatenated (the given order)."""
        return paths

    def read(self, paths: list[Path], max_bad_fraction: float) -> RawInteractions:
        frames, total, dropped = [], 0, {}
        for path in self.order(paths):
            raw = read_delimited(path, self.columns, optional=self.optional)
            bad = BadLines(str(path), total=raw.height)
            frame = normalize(raw, bad)
            bad.check(max_bad_fraction)
            frames.append(frame)
            total += bad.total
            for k, v in bad.counts.items():
                dropped[k] = dropped.get(k, 0) + v
        return RawInteractions(pl.concat(frames), total, dropped)


class BenchmarkCsvReader(TableReader):
    """Reads the 2023 benchmark CSVs ``{Category}.{train,valid,test}.csv(.gz)`` as one sequence.

    Each user's full sequence is rebuilt as the train rows (in file order, chronological), then
    the valid row, then the test row: the files are concatenated in the order train, valid,
    test, so the stable sort by (user, timestamp, file order) reproduces the official order and
    leave-one-out gives back the official valid/test targets. The ``history`` column is
    redundant with that order and is not read. Timestamps are milliseconds (converted).
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "user_id": "user_id",
                "item_id": "parent_asin",
                "rating": "rating",
                "timestamp": "timestamp",
            }
        )

    def order(self, paths: list[Path]) -> list[Path]:
        rank = {"train": 0, "valid": 1, "test": 2}
        return sorted(
            paths, key=lambda p: next((r for s, r in rank.items() if f".{s}." in p.name), 3)
        )


AMAZON2014_REVIEW_KEYS = {
    "user_id": "reviewerID",
    "item_id": "asin",
    "timestamp": "unixReviewTime",
    "rating": "overall",
    "review": "reviewText",
}
AMAZON2023_REVIEW_KEYS = {
    "user_id": "user_id",
    "item_id": "parent_asin",
    "timestamp": "timestamp",
    "rating": "rating",
    "review": "text",
}


class Amazon2023Reader:
    """2023 reviews: raw ``*.jsonl(.gz)`` files, or benchmark ``*.{train,valid,test}.csv(.gz)``."""

    def read(self, paths: list[Path], max_bad_fraction: float) -> RawInteractions:
        csvs = [p for p in paths if re.search(r"\.csv(\.gz)?$", p.name)]
        jsonl = [p for p in paths if p not in csvs]
        parts = []
        if csvs:
            parts.append(BenchmarkCsvReader().read(csvs, max_bad_fraction))
        if jsonl:
            parts.append(JsonReviewsReader(AMAZON2023_REVIEW_KEYS).read(jsonl, max_bad_fraction))
        dropped: dict[str, int] = {}
        for part in parts:
            for k, v in part.dropped.items():
                dropped[k] = dropped.get(k, 0) + v
        return RawInteractions(
            pl.concat([p.frame for p in parts]), sum(p.input_rows for p in parts), dropped
        )
