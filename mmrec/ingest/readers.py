"""Readers of raw interaction files: Amazon 2014/2018/2023 reviews, 2023 benchmark CSVs, tabular
files. Every reader yields its rows frame by frame (bounded memory for the JSON-lines files)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from mmrec.calendar import DAY, to_unix
from mmrec.data.batch import EventField, stored_fields
from mmrec.ingest.errors import BadLines, DataError
from mmrec.ingest.rawfiles import json_line_frames, read_bytes, read_delimited

__all__ = [
    "RawInteractions",
    "ReadStats",
    "TimeWindow",
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


@dataclass(frozen=True)
class TimeWindow:
    """The times a review can have: ``[start, end)`` unix seconds.

    Rows outside it are dropped and counted as ``time_out_of_range`` (with the bad lines of
    their file). ``amazon()`` is the window of the Amazon review data: from 1995-01-01 (Amazon
    opened in July 1995) to the end of the day of the prepare (UTC).
    """

    start: int
    end: int

    @classmethod
    def amazon(cls, now: datetime | None = None) -> TimeWindow:
        today = (now or datetime.now(timezone.utc)).date()
        return cls(to_unix("1995-01-01"), to_unix(today + timedelta(days=1)))

    def describe(self) -> str:
        last = datetime.fromtimestamp(self.end - DAY, timezone.utc).date()
        first = datetime.fromtimestamp(self.start, timezone.utc).date()
        return f"{first} .. {last}"


@dataclass
class ReadStats:
    """What a reader has read so far: data rows (bad ones included), rows skipped by reason and
    the truncated files it kept the complete lines of (``BadLines.truncation_record``)."""

    input_rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: list[dict] = field(default_factory=list)

    def add(self, bad: BadLines) -> None:
        self.input_rows += bad.total
        self.dropped.update(bad.counts)
        if bad.truncated is not None:
            self.truncated.append(bad.truncation_record())


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


#: Absolute values at or above this are milliseconds (in seconds they would be after year 5000;
#: in milliseconds 1e11 is 1973), decided value by value.
MS_THRESHOLD = 1e11


def normalize(frame: pl.DataFrame, bad: BadLines, window: TimeWindow | None = None) -> pl.DataFrame:
    """Checks and converts a raw frame (REQUIRED/OPTIONAL columns + ``line``) to the reader output.

    Rows with a missing user/item/timestamp (``missing_field``), an unreadable timestamp
    (``bad_timestamp``), a time outside ``window`` (``time_out_of_range``) or a non-numeric
    rating (``bad_rating``) are counted in ``bad`` and removed. Timestamps become unix seconds;
    a value is milliseconds when its magnitude is at least ``MS_THRESHOLD``, decided per value
    (a file may mix both units).
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
    outside = pl.lit(False)
    if window is not None:
        ts = pl.col("timestamp")
        outside = ~missing & ~bad_ts & ((ts < window.start) | (ts >= window.end))
    bad_rating = (
        ~missing
        & ~bad_ts
        & ~outside
        & pl.col("_rating_raw").is_not_null()
        & pl.col("rating").is_null()
    )
    checks = {
        "missing_field": missing,
        "bad_timestamp": bad_ts,
        "time_out_of_range": outside,
        "bad_rating": bad_rating,
    }
    frame = frame.with_columns(expr.alias(f"_{reason}") for reason, expr in checks.items())
    names = [f"_{reason}" for reason in checks]
    counts = frame.select(pl.col(names).sum()).row(0)
    if sum(counts):
        any_bad = pl.any_horizontal(names)
        room = max(0, 5 - len(bad.examples))
        offenders = frame.filter(any_bad).head(room)
        offenders = offenders.with_columns(
            pl.concat_str(
                [pl.when(expr).then(pl.lit(name)) for name, expr in flags.items()],
                separator=", ",
                ignore_nulls=True,
            ).alias("_which"),
            pl.col("_ts_raw", "_rating_raw").cast(pl.String),
        )
        for row in offenders.iter_rows(named=True):
            if row["_missing_field"]:
                message = f"missing required field(s) {row['_which']}"
            elif row["_bad_timestamp"]:
                message = f"timestamp {row['_ts_raw']!r} is neither a number nor a date"
            elif row["_time_out_of_range"]:
                message = (
                    f"timestamp {row['_ts_raw']!r} is outside {window.describe()} "
                    "(before 1995 or after the day of the prepare)"
                )
            else:
                message = f"rating {row['_rating_raw']!r} is not a number"
            bad.examples.append((row["line"], message))
        for reason, count in zip(checks, counts, strict=True):
            if count:
                bad.counts[reason] += count
        frame = frame.filter(~any_bad)
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
    elif dtype.is_integer():  # exact: no float rounding of millisecond values
        ts = raw.cast(pl.Int64, strict=False)
        ms = ts.abs() >= int(MS_THRESHOLD)
        seconds = pl.when(ms).then(ts // 1000).otherwise(ts)
        return frame.with_columns(seconds.cast(pl.Float64).alias("timestamp"))
    else:
        frame = frame.with_columns(raw.cast(pl.Float64, strict=False).alias("timestamp"))
    value = pl.col("timestamp").fill_nan(None)
    seconds = pl.when(value.abs() >= MS_THRESHOLD).then(value // 1000).otherwise(value.floor())
    return frame.with_columns(seconds.alias("timestamp"))


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


class Reader:
    """A reader of interaction files: ``frames`` yields the normalized rows (the columns of
    ``RawInteractions.frame``) frame by frame in file order, counting into a ``ReadStats``;
    each file's bad lines are checked against ``max_bad_fraction`` when the file ends.

    Args:
        window: Times outside it are dropped (``time_out_of_range``); None: any time.
        allow_truncated: Keep the complete lines of a truncated gzip file (its tail is one
            ``truncated`` bad line); False: such a file is a DataError.
    """

    def __init__(self, window: TimeWindow | None = None, allow_truncated: bool = False) -> None:
        self.window = window
        self.allow_truncated = allow_truncated

    def frames(
        self,
        paths: list[Path],
        max_bad_fraction: float,
        stats: ReadStats,
        transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> Iterator[pl.DataFrame]:
        """The normalized rows, frame by frame; ``transform`` (thread-safe) is applied to each
        normalized frame, in the reader's worker threads where it has some."""
        raise NotImplementedError

    def read(self, paths: list[Path], max_bad_fraction: float) -> RawInteractions:
        """Every row at once (small inputs, tests)."""
        stats = ReadStats()
        frames = list(self.frames(paths, max_bad_fraction, stats))
        frame = pl.concat(frames) if frames else _no_rows()
        return RawInteractions(frame, stats.input_rows, dict(stats.dropped))


def _no_rows() -> pl.DataFrame:
    """A reader's output without rows (every line was bad)."""
    schema = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
    schema |= {"rating": pl.Float32, "review": pl.String}
    return pl.DataFrame(schema=schema | {f.column: f.polars_dtype for f in extra_fields()})


class JsonReviewsReader(Reader):
    """Reads official review JSON-lines files (one JSON object a line, ``.gz`` or plain), in
    blocks of lines: memory does not grow with the file.

    Args:
        keys: Our column -> JSON key, e.g. ``{"user_id": "reviewerID", "item_id": "asin", ...}``.
        window: Times outside it are dropped (``time_out_of_range``); None: any time.
        allow_truncated: Keep the complete lines of a truncated gzip file.
    """

    def __init__(
        self, keys: dict[str, str], window: TimeWindow | None = None, allow_truncated: bool = False
    ) -> None:
        super().__init__(window, allow_truncated)
        self.keys = keys | {f.column: f.column for f in extra_fields() if f.column not in keys}

    def frames(
        self,
        paths: list[Path],
        max_bad_fraction: float,
        stats: ReadStats,
        transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> Iterator[pl.DataFrame]:
        typed = {"timestamp": pl.Int64, "rating": pl.Float64}

        def check(frame: pl.DataFrame, found: BadLines) -> pl.DataFrame:
            frame = normalize(frame, found, self.window)
            return transform(frame) if transform is not None else frame

        for path in paths:
            bad = BadLines(str(path))
            yield from json_line_frames(
                path,
                self.keys,
                bad,
                typed=typed,
                transform=check,
                allow_truncated=self.allow_truncated,
            )
            bad.check(max_bad_fraction)
            stats.add(bad)


class TableReader(Reader):
    """Reads csv/tsv/parquet interaction tables through a column mapping (a table is read whole).

    Args:
        columns: Our column (``user_id``, ``item_id``, ``timestamp``, ``rating``, ``review``,
            ``extra_fields()`` columns) -> the file's column. Unmapped optional columns are
            looked up under our own name.
        window: Times outside it are dropped (``time_out_of_range``); None: any time.
        allow_truncated: Keep the complete lines of a truncated ``.gz`` table.
    """

    def __init__(
        self,
        columns: dict[str, str] | None = None,
        window: TimeWindow | None = None,
        allow_truncated: bool = False,
    ) -> None:
        super().__init__(window, allow_truncated)
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

    def frames(
        self,
        paths: list[Path],
        max_bad_fraction: float,
        stats: ReadStats,
        transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> Iterator[pl.DataFrame]:
        for path in self.order(paths):
            bad = BadLines(str(path))
            raw = read_delimited(
                path,
                self.columns,
                optional=self.optional,
                bad=bad,
                allow_truncated=self.allow_truncated,
            )
            bad.total += raw.height
            frame = normalize(raw, bad, self.window)
            del raw
            bad.check(max_bad_fraction)
            stats.add(bad)
            yield transform(frame) if transform is not None else frame


class BenchmarkCsvReader(TableReader):
    """Reads the 2023 benchmark CSVs ``{Category}.{train,valid,test}.csv(.gz)`` as one sequence.

    Each user's full sequence is rebuilt as the train rows (in file order, chronological), then
    the valid row, then the test row: the files are concatenated in the order train, valid,
    test, so the stable sort by (user, timestamp, file order) reproduces the official order and
    leave-one-out gives back the official valid/test targets. The ``history`` column is
    redundant with that order and is not read. Timestamps are milliseconds (converted).
    """

    def __init__(self, window: TimeWindow | None = None, allow_truncated: bool = False) -> None:
        super().__init__(
            {
                "user_id": "user_id",
                "item_id": "parent_asin",
                "rating": "rating",
                "timestamp": "timestamp",
            },
            window,
            allow_truncated,
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


class Amazon2023Reader(Reader):
    """2023 reviews: raw ``*.jsonl(.gz)`` files, or benchmark ``*.{train,valid,test}.csv(.gz)``.

    Args:
        window: Times outside it are dropped (``time_out_of_range``); None: any time.
        allow_truncated: Keep the complete lines of a truncated gzip file.
    """

    def frames(
        self,
        paths: list[Path],
        max_bad_fraction: float,
        stats: ReadStats,
        transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> Iterator[pl.DataFrame]:
        csvs = [p for p in paths if re.search(r"\.csv(\.gz)?$", p.name)]
        jsonl = [p for p in paths if p not in csvs]
        if csvs:
            reader = BenchmarkCsvReader(self.window, self.allow_truncated)
            yield from reader.frames(csvs, max_bad_fraction, stats, transform)
        if jsonl:
            reader = JsonReviewsReader(AMAZON2023_REVIEW_KEYS, self.window, self.allow_truncated)
            yield from reader.frames(jsonl, max_bad_fraction, stats, transform)
