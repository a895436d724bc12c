"""Readers of raw interaction files: Amazon 2014/2018/2023 reviews, 2023 benchmark CSVs, tabular
files. Every reader yields its rows frame by frame (bounded memory for the JSON-lines files)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mmrec.ingest.errors import BadLines, DataError
from mmrec.ingest.normalize import (
    MS_THRESHOLD,
    OPTIONAL,
    REQUIRED,
    TimeWindow,
    extra_fields,
    normalize,
)
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
    # moved to mmrec.ingest.normalize, still importable here
    "MS_THRESHOLD",
    "OPTIONAL",
    "REQUIRED",
    "extra_fields",
]


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
