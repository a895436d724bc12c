"""Streaming ingest of `mmrec prepare`: reader frames -> dense id codes and the narrow per-event
columns spilled to a scratch folder, so that memory does not grow with the text of the input.

Ids become codes through polars categoricals (exact: strings are compared, nothing is hashed
away); the distinct ids are the only strings held in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from mmrec.ingest.normalize import extra_fields
from mmrec.ingest.readers import Reader, ReadStats

#: Seed of the review-text hash that tells exact duplicates from repeats.
REVIEW_HASH_SEED = 17
_SLICE = 1 << 22  # rows per slice when a spilled column is read back piecewise

#: Spilled fixed-width columns and their dtypes.
NARROW = {"u": np.uint32, "i": np.uint32, "ts": np.int64, "rating": np.float32, "rh": np.uint64}


@dataclass
class Ingested:
    """Every row the readers kept, in input order (row ``r`` = the r-th kept row of the files).

    Attributes:
        folder: Scratch folder holding the spilled columns.
        rows: Number of rows.
        users: Number of user codes (``user_ids`` names them).
        items: Number of item codes (``item_ids`` names them).
        extras: Declared extra per-event columns (``readers.extra_fields``) that were spilled.
        review_parts: Parquet files of the ``review`` text in row order (when kept).
    """

    folder: Path
    rows: int
    users: int
    items: int
    extras: list[str] = field(default_factory=list)
    review_parts: list[tuple[int, Path]] = field(default_factory=list)

    def user_ids(self, codes: np.ndarray) -> pl.Series:
        """The ``user_id`` of each code in ``codes``."""
        return self._ids("users", codes).rename("user_id")

    def item_ids(self, codes: np.ndarray) -> pl.Series:
        """The ``item_id`` of each code in ``codes``."""
        return self._ids("items", codes).rename("item_id")

    def _ids(self, name: str, codes: np.ndarray) -> pl.Series:
        return pl.read_parquet(self.folder / f"{name}.parquet").to_series().gather(codes)

    def column(self, name: str) -> np.ndarray:
        """A spilled fixed-width column, ``[rows]`` (``u``, ``i``, ``ts``, ``rating``, ``rh``)."""
        return np.fromfile(self.folder / f"{name}.bin", dtype=NARROW[name])

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """``column(name)[rows]`` for ascending ``rows``, reading the column slice by slice."""
        out = np.empty(len(rows), dtype=NARROW[name])
        bounds = np.searchsorted(rows, np.arange(0, self.rows + _SLICE, _SLICE))
        with open(self.folder / f"{name}.bin", "rb") as fh:
            for k, lo in enumerate(range(0, self.rows, _SLICE)):
                block = np.fromfile(fh, dtype=NARROW[name], count=_SLICE)
                a, b = bounds[k], bounds[k + 1]
                out[a:b] = block[rows[a:b] - lo]
        return out

    def extra_column(self, name: str, rows: np.ndarray) -> pl.Series:
        """A declared extra field of ``rows`` (any order)."""
        parts = sorted(self.folder.glob("extra-*.parquet"))
        return pl.scan_parquet(parts).select(name).collect().to_series().gather(rows)


class Ingest:
    """Consumes reader frames: ids become codes (``encode``, in the readers' threads), the
    narrow columns go to binary files in ``folder`` and, when ``keep_review``, the review text
    to parquet parts.

    Args:
        folder: An empty scratch folder.
        keep_review: Keep the review text (else only its 64-bit hash, for exact duplicates).
    """

    def __init__(self, folder: Path, keep_review: bool) -> None:
        self.folder, self.keep_review = folder, keep_review
        self.rows = 0
        self._users, self._items = pl.Categories.random(), pl.Categories.random()
        # the categories live as long as a series of their dtype: these two keep them
        self._alive = [
            pl.Series([], dtype=pl.String).cast(pl.Categorical(c))
            for c in (self._users, self._items)
        ]
        self._files = {name: open(folder / f"{name}.bin", "wb") for name in NARROW}
        self._extras = [f.column for f in extra_fields()]
        self._review_parts: list[tuple[int, Path]] = []
        self._parts = 0

    def encode(self, frame: pl.DataFrame) -> pl.DataFrame:
        """A reader frame (``user_id``, ``item_id``, ``timestamp``, ``rating``, ``review``, the
        extra fields) -> its stored columns (codes, review hash...). Thread-safe: readers run
        it in their worker threads. A code numbers an id in the order ``encode`` first saw it
        (under threads, not quite file order: the ids written are numbered from the rows)."""
        columns = [
            pl.col("user_id").cast(pl.Categorical(self._users)).to_physical().alias("u"),
            pl.col("item_id").cast(pl.Categorical(self._items)).to_physical().alias("i"),
            pl.col("timestamp").alias("ts"),
            pl.col("rating").fill_null(float("nan")),
            pl.col("review").hash(REVIEW_HASH_SEED).alias("rh"),
            *self._extras,
        ]
        if self.keep_review:
            columns.append("review")
        return frame.select(columns)

    def add(self, frame: pl.DataFrame) -> None:
        """Appends a frame made by ``encode`` (in input order)."""
        if not frame.height:
            return
        for name, dtype in NARROW.items():
            frame[name].to_numpy().astype(dtype, copy=False).tofile(self._files[name])
        k = self._parts = self._parts + 1
        if self._extras:
            frame.select(self._extras).write_parquet(self.folder / f"extra-{k:06d}.parquet")
        if self.keep_review:
            part = self.folder / f"review-{k:06d}.parquet"
            frame.select("review").write_parquet(part, compression="lz4")
            self._review_parts.append((self.rows, part))
        self.rows += frame.height

    def finish(self) -> Ingested:
        """Closes the files, writes the id of every code and releases the categories."""
        for fh in self._files.values():
            fh.close()
        counts = []
        for name, categories in (("users", self._users), ("items", self._items)):
            ids = categories.to_series()  # the string of each code, in code order
            ids.to_frame("id").write_parquet(self.folder / f"{name}.parquet")
            counts.append(len(ids))
        self._alive.clear()
        extras = self._extras if self.rows else []
        return Ingested(self.folder, self.rows, *counts, extras, self._review_parts)


def ingest(reader: Reader, paths: list[Path], max_bad_fraction: float, stats: ReadStats,
           folder: Path, keep_review: bool) -> Ingested:  # fmt: skip
    """Reads ``paths`` with ``reader`` into an ``Ingest`` (see there); its encoding runs in the
    reader's worker threads."""
    sink = Ingest(folder, keep_review)
    for frame in reader.frames(paths, max_bad_fraction, stats, sink.encode):
        sink.add(frame)
    return sink.finish()
