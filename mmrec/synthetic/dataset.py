"""Synthetic Amazon-like dataset folders with planted sequential, seasonal and content structure."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from mmrec.calendar import to_unix
from mmrec.synthetic.events import (
    LOCATIONS,
    Catalogue,
    draw,
    draw_catalogue,
    draw_items,
    draw_timelines,
)
from mmrec.synthetic.items import (
    CATEGORIES,
    SEASONS,
    item_table,
    make_item_image,
    review_texts,
)

__all__ = [
    "CATEGORIES",
    "SEASONS",
    "make_item_image",
    "make_synthetic_dataset",
    "synthetic_raw_interactions",
]


def make_synthetic_dataset(
    out: str | Path,
    num_users: int = 1000,
    num_items: int = 400,
    num_categories: int = 8,
    mean_events: float = 9.0,
    min_events: int = 5,
    max_events: int = 200,
    start: str = "2011-01-01",
    end: str = "2014-12-31",
    time_granularity: str = "day",
    mean_gap_days: float = 30.0,
    num_successors: int = 3,
    p_successor: float = 0.7,
    seasonal_fraction: float = 0.12,
    p_seasonal: float = 0.5,
    split: str = "loo",
    valid_start: str | None = None,
    test_start: str | None = None,
    with_images: bool = False,
    image_size: int = 32,
    with_reviews: bool = False,
    keep_repeats: bool = False,
    seed: int = 0,
) -> Path:
    """Writes a complete dataset folder (the schema of ``mmrec prepare``) with planted structure.

    Planted structure: (1) sequences: with probability ``p_successor`` the next item is one of
    the previous item's ``num_successors`` successors (same category, probabilities 3:2:1...);
    (2) seasons: inside a window of ``SEASONS`` an event is, with probability ``p_seasonal``, an
    item of that season, and seasonal items are bought nowhere else (``items.season``,
    ``meta["seasons"]``); (3) other events draw a category from the user's taste (mostly
    their ``location``'s) and an item by Zipf popularity; (4) ratings 1-5 around a per-item
    quality; (5) titles, descriptions, ``categories`` and images carry the category.
    A user's events have exponential gaps (mean ``mean_gap_days``) inside [start, end].

    Args:
        out: Folder to write (created; files in it are replaced).
        num_users: Users, each with ``min_events``..``max_events`` events.
        num_items: Items (ids ``1..num_items``).
        num_categories: Categories used (at most ``len(CATEGORIES)``).
        mean_events: Mean events per user.
        min_events: Fewest events per user.
        max_events: Most events per user.
        start: First day (ISO date).
        end: Last day (ISO date).
        time_granularity: ``"day"`` (midnight UTC timestamps) or ``"second"``.
        mean_gap_days: Mean days between a user's consecutive events.
        num_successors: Size of each item's successor set.
        p_successor: Probability that an event follows its predecessor's successor set.
        seasonal_fraction: Share of items that are seasonal (spread over the seasons).
        p_seasonal: Probability that an event inside a season window is a seasonal item.
        split: ``"loo"`` (last event test, second last valid) or ``"temporal"``.
        valid_start: Temporal split: first valid day (default: 85% through the time span).
        test_start: Temporal split: first test day (default: 92.5% through the time span).
        with_images: Write ``images/{item_idx}.png`` and point ``image_urls`` at them.
        image_size: Image width and height.
        with_reviews: Fill ``review`` with short generated text (else null).
        keep_repeats: Keep a user's repeated purchases of an item; False (as ``mmrec prepare``
            by default) keeps the earliest and counts the rest in ``meta["dropped"]["repeat"]``,
            so a user may end with fewer than ``min_events`` events.
        seed: Everything is a deterministic function of the arguments and this seed.

    Returns:
        The folder path.
    """
    params = {k: v for k, v in locals().items() if k != "out"}
    if time_granularity not in ("day", "second") or split not in ("loo", "temporal"):
        raise ValueError("time_granularity must be 'day'|'second' and split 'loo'|'temporal'")
    C = min(num_categories, len(CATEGORIES))
    n_seasonal = int(round(seasonal_fraction * num_items))
    _check_items(num_items, C, n_seasonal, num_successors)
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    catalogue = draw_catalogue(rng, num_items, C, n_seasonal, num_successors)
    tl = draw_timelines(
        rng,
        num_users,
        C,
        mean_events,
        min_events,
        max_events,
        (start, end),
        mean_gap_days,
        time_granularity,
    )
    items = draw_items(rng, catalogue, tl, p_seasonal, p_successor)
    total = len(items)
    quality = catalogue.quality[items]
    rating = np.clip(np.rint(quality + rng.normal(0, 0.9, total)), 1, 5).astype(np.float32)
    ev_u, ts, lengths = tl.ev_u, tl.ts, tl.lengths
    if not keep_repeats:  # like `mmrec prepare`'s default: a user's earliest (user, item) only
        keep = pl.Series(ev_u * (num_items + 1) + items).is_first_distinct().to_numpy()
        ev_u, ts, items, rating = ev_u[keep], ts[keep], items[keep], rating[keep]
        lengths = np.bincount(ev_u, minlength=num_users)
    code, split_meta = _split(split, ts, ev_u, lengths, (start, end), valid_start, test_start)
    reviews = review_texts(items, catalogue.cat, rating) if with_reviews else None
    inter = _interactions(ev_u, items, ts, rating, reviews, code)
    items_df = item_table(out, catalogue.cat, catalogue.season, rng, with_images, image_size)
    inter.write_parquet(out / "interactions.parquet")
    items_df.write_parquet(out / "items.parquet")
    _users_table(tl.loc).write_parquet(out / "users.parquet")
    meta = _meta(params, total, ts, split_meta, catalogue, C)
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "meta.json")
    return out


def _check_items(num_items: int, C: int, n_seasonal: int, num_successors: int) -> None:
    if num_items - n_seasonal < C * (num_successors + 1) or n_seasonal < (3 if n_seasonal else 0):
        raise ValueError(
            f"num_items={num_items} is too small: need {C * (num_successors + 1)} non-seasonal "
            "items (num_categories * (num_successors + 1)) and 0 or >= 3 seasonal items"
        )


def _meta(
    params: dict, generated: int, ts: np.ndarray, split_meta: dict, catalogue: Catalogue, C: int
) -> dict:
    """meta.json: counts, time range, splits, the arguments' fingerprint, planted structure.

    Args:
        params: ``make_synthetic_dataset``'s arguments (but ``out``).
        generated: Events generated (before dropping repeats).
        ts: ``[E]`` times of the events kept.
        split_meta: meta.json's ``split``.
        catalogue: The planted item structure.
        C: Categories used.
    """
    kept, keep_repeats = len(ts), params["keep_repeats"]
    return {
        "source": "synthetic",
        "version": 1,  # the dataset-folder format version of mmrec.ingest.prepare
        "category": "Synthetic_Beauty",
        "num_users": params["num_users"],
        "num_items": params["num_items"],
        "num_interactions": kept,
        "input_rows": generated,
        "dropped": {"repeat": generated - kept} if not keep_repeats else {},
        "time_granularity": params["time_granularity"],
        "time_range": [int(ts.min()), int(ts.max())],
        "split": split_meta,
        "kcore": 0,
        "keep_repeats": keep_repeats,
        "fingerprint": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16],
        "params": params,
        "seasons": _seasons_meta(catalogue.season_members),
        "categories": [c[0] for c in CATEGORIES[:C]],
        "locations": list(LOCATIONS),
    }


def _split(
    protocol: str,
    ts: np.ndarray,
    ev_u: np.ndarray,
    lengths: np.ndarray,
    span_days: tuple[str, str],
    valid_start: str | None,
    test_start: str | None,
) -> tuple[np.ndarray, dict]:
    """``[E]`` split code of each event (0 train, 1 valid, 2 test) and meta.json's ``split``."""
    if protocol == "loo":
        ustart = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pos = np.arange(len(ts)) - ustart[ev_u]
        n_of = lengths[ev_u]
        code = np.where(n_of < 3, 0, np.where(pos == n_of - 1, 2, np.where(pos == n_of - 2, 1, 0)))
        split_meta: dict = {"protocol": "loo"}
    else:
        s0, s1 = to_unix(span_days[0]), to_unix(span_days[1])
        valid_start = valid_start or _iso(s0 + 0.85 * (s1 - s0))
        test_start = test_start or _iso(s0 + 0.925 * (s1 - s0))
        code = (ts >= to_unix(valid_start)).astype(np.int64) + (ts >= to_unix(test_start))
        split_meta = {
            "protocol": "temporal", "valid_start": valid_start, "test_start": test_start,
            "valid_start_ts": to_unix(valid_start), "test_start_ts": to_unix(test_start),
        }  # fmt: skip
    split_meta["counts"] = dict(
        zip(("train", "valid", "test"), np.bincount(code, minlength=3).tolist(), strict=True)
    )
    return code, split_meta


def _interactions(
    ev_u: np.ndarray,
    items: np.ndarray,
    ts: np.ndarray,
    rating: np.ndarray,
    reviews: pl.Series | None,
    code: np.ndarray,
) -> pl.DataFrame:
    """interactions.parquet's frame (the schema of ``mmrec prepare``)."""
    if reviews is None:
        reviews = pl.Series([None] * len(items), dtype=pl.String)
    return pl.DataFrame(
        {
            "user_idx": ev_u.astype(np.int32),
            "item_idx": items.astype(np.int32),
            "timestamp": ts,
            "rating": rating,
            "review": reviews,
            "split": np.array(["train", "valid", "test"])[code],
        }
    )


def _users_table(loc: np.ndarray) -> pl.DataFrame:
    """users.parquet's frame: ``user_idx``, ``user_id`` (``U0000042``), ``location``."""
    return pl.DataFrame(
        {"user_idx": np.arange(len(loc), dtype=np.int32), "location": np.array(LOCATIONS)[loc]}
    ).select(
        "user_idx",
        pl.format("U{}", pl.col("user_idx").cast(pl.String).str.zfill(7)).alias("user_id"),
        "location",
    )


def _seasons_meta(season_members: list[np.ndarray]) -> dict:
    """meta.json's ``seasons``: each season's window and items."""
    return {
        name: {
            "start": f"{a[0]:02d}-{a[1]:02d}",
            "end": f"{b[0]:02d}-{b[1]:02d}",
            "items": season_members[s].tolist(),
        }
        for s, (name, (a, b)) in enumerate(SEASONS.items())
    }


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(int(unix), tz=timezone.utc).date().isoformat()


def synthetic_raw_interactions(
    n_rows: int, num_users: int, num_items: int, seed: int = 0
) -> pl.DataFrame:
    """Raw-file-like rows for benchmarks: Zipf items, random users and times, unsorted.

    Args:
        n_rows: Number of rows.
        num_users: Distinct user ids drawn from (``"A0000001"``-style strings).
        num_items: Distinct item ids drawn from (``"B000000001"``-style strings), Zipf-popular.
        seed: Random seed.

    Returns:
        A frame with ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64 unix seconds,
        2010..2015), ``rating`` (float32, 1..5).
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_items + 1) ** 0.9
    item = draw(np.cumsum(weights), np.arange(num_items), rng.random(n_rows))
    return pl.DataFrame(
        {
            "user": rng.integers(0, num_users, n_rows),
            "item": item,
            "timestamp": rng.integers(to_unix("2010-01-01"), to_unix("2015-01-01"), n_rows),
            "rating": rng.integers(1, 6, n_rows).astype(np.float32),
        }
    ).select(
        pl.format("A{}", pl.col("user").cast(pl.String).str.zfill(7)).alias("user_id"),
        pl.format("B{}", pl.col("item").cast(pl.String).str.zfill(9)).alias("item_id"),
        "timestamp",
        "rating",
    )


if __name__ == "__main__":  # python -m mmrec.synthetic.dataset --out DIR [--num_users N ...]
    from jsonargparse import CLI

    print(CLI(make_synthetic_dataset, as_positional=False))
