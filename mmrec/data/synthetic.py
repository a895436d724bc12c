"""Synthetic Amazon-like dataset folders with planted sequential, seasonal and content structure."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from mmrec.calendar import DAY, to_unix
from mmrec.data.synthetic_items import (
    CATEGORIES,
    SEASONS,
    item_table,
    make_item_image,
    review_texts,
)

__all__ = ["CATEGORIES", "SEASONS", "make_item_image", "make_synthetic_dataset", "synthetic_raw_interactions"]

LOCATIONS = ("US-East", "US-West", "UK", "DE", "JP")


def _unix(day: str) -> int:
    return to_unix(day)


def _season_of(ts: np.ndarray) -> np.ndarray:
    """Index into ``SEASONS`` of each unix time, -1 outside every window: ``[N]`` int8."""
    days = ts.astype("datetime64[s]").astype("datetime64[D]")
    month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    md = month * 100 + dom
    out = np.full(len(ts), -1, np.int8)
    for s, ((m0, d0), (m1, d1)) in enumerate(SEASONS.values()):
        out[(md >= m0 * 100 + d0) & (md <= m1 * 100 + d1)] = s
    return out


def _draw(cdf: np.ndarray, members: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Members drawn by inverse CDF for uniforms ``r``."""
    return members[np.minimum(np.searchsorted(cdf, r * cdf[-1], side="right"), len(members) - 1)]


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
    if num_items - n_seasonal < C * (num_successors + 1) or n_seasonal < (3 if n_seasonal else 0):
        raise ValueError(
            f"num_items={num_items} is too small: need {C * (num_successors + 1)} non-seasonal "
            "items (num_categories * (num_successors + 1)) and 0 or >= 3 seasonal items"
        )
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    N, U = num_items, num_users
    item = np.arange(1, N + 1)

    # items: category, season (-1 none), popularity, quality, successor sets
    cat = np.zeros(N + 1, np.int64)
    cat[1:] = rng.permutation(np.arange(N) % C)
    season = np.full(N + 1, -1, np.int64)
    seasonal = rng.choice(item, n_seasonal, replace=False)
    season[seasonal] = np.arange(n_seasonal) % len(SEASONS)
    pop = np.zeros(N + 1)
    pop[1:] = 1.0 / rng.permutation(np.arange(1, N + 1)) ** 0.8
    quality = np.clip(rng.normal(3.9, 0.6, N + 1), 1.5, 5.0)
    succ = np.zeros((N + 1, num_successors), np.int64)
    cat_members, cat_cdf = [], []
    for c in range(C):
        ring = rng.permutation(item[(cat[1:] == c) & (season[1:] < 0)])
        m = len(ring)
        for k in range(num_successors):
            succ[ring, k] = ring[(np.arange(m) + 1 + k) % m]
        seas = item[(cat[1:] == c) & (season[1:] >= 0)]
        succ[seas] = succ[rng.choice(ring, len(seas))]  # after a seasonal item: ordinary items
        cat_members.append(ring)
        cat_cdf.append(np.cumsum(pop[ring]))
    season_members = [item[season[1:] == s] for s in range(len(SEASONS))]
    season_cdf = [np.cumsum(pop[m]) for m in season_members]
    succ_cdf = np.cumsum(np.arange(num_successors, 0, -1, dtype=np.float64))

    # users: location -> category taste; event counts; timestamps
    loc = rng.integers(0, len(LOCATIONS), U)
    loc_taste = rng.dirichlet(np.full(C, 0.3), len(LOCATIONS))
    taste = 0.7 * loc_taste[loc] + 0.3 * rng.dirichlet(np.ones(C), U)
    taste_cdf = np.cumsum(taste, axis=1)
    extra = rng.geometric(1.0 / max(mean_events - min_events + 1, 1.0), U) - 1
    lengths = np.minimum(min_events + extra, max_events).astype(np.int64)
    total = int(lengths.sum())
    ustart = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ev_u = np.repeat(np.arange(U), lengths)
    gaps = rng.exponential(mean_gap_days * DAY, total)
    gaps[ustart] = 0.0
    cs = np.cumsum(gaps)
    cs -= np.repeat(cs[ustart], lengths)
    span = _unix(end) + DAY - 1 - _unix(start)
    dur = cs[ustart + lengths - 1]
    scale = np.minimum(1.0, span / np.maximum(dur, 1.0))
    t0 = _unix(start) + rng.random(U) * (span - dur * scale)
    ts = (t0[ev_u] + cs * scale[ev_u]).astype(np.int64)
    if time_granularity == "day":
        ts -= ts % DAY
    ev_season = _season_of(ts)

    # items per position, vectorised over the users still active at that position
    order = np.argsort(-lengths, kind="stable")
    active_n = U - np.searchsorted(np.sort(lengths), np.arange(lengths.max()), side="right")
    items = np.zeros(total, np.int64)
    for t, n_t in enumerate(active_n):
        users = order[:n_t]
        idx = ustart[users] + t
        r = rng.random((n_t, 4))
        chosen = np.zeros(n_t, np.int64)
        ss = ev_season[idx]
        for s in range(len(SEASONS) if n_seasonal else 0):
            pick = (ss == s) & (r[:, 0] < p_seasonal)
            chosen[pick] = _draw(season_cdf[s], season_members[s], r[pick, 1])
        if t > 0:
            follow = (chosen == 0) & (r[:, 2] < p_successor)
            k = np.searchsorted(succ_cdf, r[follow, 1] * succ_cdf[-1], side="right")
            chosen[follow] = succ[items[idx[follow] - 1], np.minimum(k, num_successors - 1)]
        fresh = chosen == 0
        c_of = (taste_cdf[users[fresh]] < r[fresh, 3:4]).sum(1).clip(max=C - 1)
        fresh_idx = np.flatnonzero(fresh)
        for c in range(C):
            sel = fresh_idx[c_of == c]
            chosen[sel] = _draw(cat_cdf[c], cat_members[c], r[sel, 1])
        items[idx] = chosen
    rating = np.clip(np.rint(quality[items] + rng.normal(0, 0.9, total)), 1, 5).astype(np.float32)
    generated = total
    if not keep_repeats:  # like `mmrec prepare`'s default: a user's earliest (user, item) only
        keep = pl.Series(ev_u * (N + 1) + items).is_first_distinct().to_numpy()
        ev_u, ts, items, rating = ev_u[keep], ts[keep], items[keep], rating[keep]
        total = len(items)
        lengths = np.bincount(ev_u, minlength=U)
        ustart = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    # split
    pos = np.arange(total) - ustart[ev_u]
    n_of = lengths[ev_u]
    if split == "loo":
        code = np.where(n_of < 3, 0, np.where(pos == n_of - 1, 2, np.where(pos == n_of - 2, 1, 0)))
        split_meta: dict = {"protocol": "loo"}
    else:
        s0, s1 = _unix(start), _unix(end)
        valid_start = valid_start or _iso(s0 + 0.85 * (s1 - s0))
        test_start = test_start or _iso(s0 + 0.925 * (s1 - s0))
        code = (ts >= _unix(valid_start)).astype(np.int64) + (ts >= _unix(test_start))
        split_meta = {
            "protocol": "temporal", "valid_start": valid_start, "test_start": test_start,
            "valid_start_ts": _unix(valid_start), "test_start_ts": _unix(test_start),
        }  # fmt: skip
    split_meta["counts"] = dict(
        zip(("train", "valid", "test"), np.bincount(code, minlength=3).tolist(), strict=True)
    )
    split_names = np.array(["train", "valid", "test"])

    inter = pl.DataFrame(
        {
            "user_idx": ev_u.astype(np.int32),
            "item_idx": items.astype(np.int32),
            "timestamp": ts,
            "rating": rating,
            "review": review_texts(items, cat, rating)
            if with_reviews
            else pl.Series([None] * total, dtype=pl.String),
            "split": split_names[code],
        }
    )
    items_df = item_table(out, cat, season, rng, with_images, image_size)
    users_df = pl.DataFrame(
        {"user_idx": np.arange(U, dtype=np.int32), "location": np.array(LOCATIONS)[loc]}
    ).select(
        "user_idx",
        pl.format("U{}", pl.col("user_idx").cast(pl.String).str.zfill(7)).alias("user_id"),
        "location",
    )
    inter.write_parquet(out / "interactions.parquet")
    items_df.write_parquet(out / "items.parquet")
    users_df.write_parquet(out / "users.parquet")
    seasons = {
        name: {
            "start": f"{a[0]:02d}-{a[1]:02d}",
            "end": f"{b[0]:02d}-{b[1]:02d}",
            "items": season_members[s].tolist(),
        }
        for s, (name, (a, b)) in enumerate(SEASONS.items())
    }
    meta = {
        "source": "synthetic",
        "version": 1,  # the dataset-folder format version of mmrec.data.prepare
        "category": "Synthetic_Beauty",
        "num_users": U,
        "num_items": N,
        "num_interactions": total,
        "input_rows": generated,
        "dropped": {"repeat": generated - total} if not keep_repeats else {},
        "time_granularity": time_granularity,
        "time_range": [int(ts.min()), int(ts.max())],
        "split": split_meta,
        "kcore": 0,
        "keep_repeats": keep_repeats,
        "fingerprint": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16],
        "params": params,
        "seasons": seasons,
        "categories": [c[0] for c in CATEGORIES[:C]],
        "locations": list(LOCATIONS),
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "meta.json")
    return out


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
    item = _draw(np.cumsum(weights), np.arange(num_items), rng.random(n_rows))
    return pl.DataFrame(
        {
            "user": rng.integers(0, num_users, n_rows),
            "item": item,
            "timestamp": rng.integers(_unix("2010-01-01"), _unix("2015-01-01"), n_rows),
            "rating": rng.integers(1, 6, n_rows).astype(np.float32),
        }
    ).select(
        pl.format("A{}", pl.col("user").cast(pl.String).str.zfill(7)).alias("user_id"),
        pl.format("B{}", pl.col("item").cast(pl.String).str.zfill(9)).alias("item_id"),
        "timestamp",
        "rating",
    )


if __name__ == "__main__":  # python -m mmrec.data.synthetic --out DIR [--num_users N ...]
    from jsonargparse import CLI

    print(CLI(make_synthetic_dataset, as_positional=False))
