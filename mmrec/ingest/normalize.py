"""What every reader of interaction files returns: the required and optional columns, times in
unix seconds (numbers, milliseconds or ISO dates, within a time window), ratings as numbers,
and the declared per-event fields passed through; bad rows are counted, never kept."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import polars as pl

from mmrec.calendar import DAY, to_unix
from mmrec.data.batch import EventField, stored_fields
from mmrec.ingest.errors import BadLines

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
