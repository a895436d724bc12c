"""Writing the dataset folder's parquet files: atomically, and interactions.parquet in bounded
memory (review text, when kept, is put in output order by an external bucket sort)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from mmrec.data.batch import event_columns
from mmrec.ingest.clean import SPLIT_NAMES, Cleaned
from mmrec.ingest.stream import Ingested

#: Output rows per bucket of the review-text sort.
BUCKET_ROWS = 1 << 18


def write_parquet(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> None:
    """Writes ``frame`` to ``path`` atomically (a LazyFrame streams)."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(frame, pl.LazyFrame):
        frame.sink_parquet(tmp)
    else:
        frame.write_parquet(tmp)
    os.replace(tmp, path)


def _narrow(kept: Cleaned, split: np.ndarray, data: Ingested) -> pl.DataFrame:
    """The per-event columns of the output rows, split as its code (``_split``)."""
    columns = {
        "user_idx": kept.user_idx,
        "item_idx": kept.item_idx,
        "timestamp": kept.ts,
        "rating": pl.Series(kept.rating).fill_nan(None),
    }
    for name in data.extras:
        columns[name] = data.extra_column(name, kept.rows)
    return pl.DataFrame(columns).with_columns(pl.Series("_split", split))


def _final(frame: pl.LazyFrame, review: pl.Expr) -> pl.LazyFrame:
    """The DESIGN.md columns in their order: user_idx, the event columns, review, split."""
    split = pl.col("_split").replace_strict(dict(enumerate(SPLIT_NAMES)), return_dtype=pl.String)
    return frame.select("user_idx", *event_columns(), review.alias("review"), split.alias("split"))


def write_interactions(path: Path, kept: Cleaned, split: np.ndarray, data: Ingested) -> None:
    """interactions.parquet of the kept rows (already in output order)."""
    narrow = _narrow(kept, split, data)
    if not data.review_parts:
        write_parquet(_final(narrow.lazy(), pl.lit(None, pl.String)), path)
        return
    pieces = _sorted_reviews(kept.rows, data)
    parts = []
    for k, piece in enumerate(pieces):
        lo = k * BUCKET_ROWS
        rows = narrow.slice(lo, BUCKET_ROWS).with_columns(piece)
        part = data.folder / f"out-{k:06d}.parquet"
        _final(rows.lazy(), pl.col("review")).sink_parquet(part)
        parts.append(part)
    del narrow
    write_parquet(pl.scan_parquet(parts), path)


def _sorted_reviews(rows: np.ndarray, data: Ingested):
    """The review text of output rows ``[k*B, (k+1)*B)`` for k = 0, 1, ...: each spilled text
    part (input order) is split by output bucket into small files, then each bucket is read and
    sorted alone, so memory holds one bucket of text at a time."""
    dest = np.full(data.rows, -1, dtype=np.int64)
    dest[rows] = np.arange(len(rows))
    buckets = data.folder / "buckets"
    buckets.mkdir()
    for k, (start, part) in enumerate(data.review_parts):
        text = pl.read_parquet(part)["review"]
        pos = dest[start : start + len(text)]
        sel = np.flatnonzero(pos >= 0)
        frame = pl.DataFrame({"pos": pos[sel], "review": text.gather(sel)})
        frame = frame.with_columns((pl.col("pos") // BUCKET_ROWS).alias("bucket"))
        for (b,), group in frame.partition_by("bucket", as_dict=True).items():
            group.drop("bucket").write_parquet(buckets / f"{b:06d}-{k:06d}.parquet")
        part.unlink()
    del dest
    for b in range((len(rows) + BUCKET_ROWS - 1) // BUCKET_ROWS):
        files = sorted(buckets.glob(f"{b:06d}-*.parquet"))
        reviews = pl.read_parquet(files).sort("pos")
        for f in files:
            f.unlink()
        yield reviews["review"]
