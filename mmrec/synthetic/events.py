"""Synthetic planted structure: item catalogue, user timelines and the item of every event."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrec.calendar import DAY, to_unix
from mmrec.synthetic.items import SEASONS

LOCATIONS = ("US-East", "US-West", "UK", "DE", "JP")


def season_of(ts: np.ndarray) -> np.ndarray:
    """Index into ``SEASONS`` of each unix time, -1 outside every window: ``[N]`` int8."""
    days = ts.astype("datetime64[s]").astype("datetime64[D]")
    month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    md = month * 100 + dom
    out = np.full(len(ts), -1, np.int8)
    for s, ((m0, d0), (m1, d1)) in enumerate(SEASONS.values()):
        out[(md >= m0 * 100 + d0) & (md <= m1 * 100 + d1)] = s
    return out


def draw(cdf: np.ndarray, members: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Members drawn by inverse CDF for uniforms ``r``."""
    return members[np.minimum(np.searchsorted(cdf, r * cdf[-1], side="right"), len(members) - 1)]


@dataclass
class Catalogue:
    """The planted item structure; arrays ``[N + 1]`` are indexed by item (row 0 unused)."""

    cat: np.ndarray  # [N+1] category
    season: np.ndarray  # [N+1] index into SEASONS, -1: not seasonal
    quality: np.ndarray  # [N+1] mean rating
    succ: np.ndarray  # [N+1, K] each item's successor set
    succ_cdf: np.ndarray  # [K] successor k is drawn with weight K - k
    cat_members: list[np.ndarray]  # per category: its ordinary (non-seasonal) items
    cat_cdf: list[np.ndarray]  # per category: popularity CDF of cat_members
    season_members: list[np.ndarray]  # per season: its items
    season_cdf: list[np.ndarray]  # per season: popularity CDF of season_members


def draw_catalogue(
    rng: np.random.Generator, N: int, C: int, n_seasonal: int, num_successors: int
) -> Catalogue:
    """Items: category, season (-1 none), Zipf popularity, quality, successor sets."""
    item = np.arange(1, N + 1)
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
    return Catalogue(
        cat, season, quality, succ,
        succ_cdf=np.cumsum(np.arange(num_successors, 0, -1, dtype=np.float64)),
        cat_members=cat_members, cat_cdf=cat_cdf, season_members=season_members,
        season_cdf=[np.cumsum(pop[m]) for m in season_members],
    )  # fmt: skip


@dataclass
class Timelines:
    """Users and the times of their events (flat, user-major; ``E`` events)."""

    loc: np.ndarray  # [U] index into LOCATIONS
    taste_cdf: np.ndarray  # [U, C] category taste, cumulative
    lengths: np.ndarray  # [U] events per user
    ustart: np.ndarray  # [U] flat index of each user's first event
    ev_u: np.ndarray  # [E] user of each event
    ts: np.ndarray  # [E] unix seconds, increasing per user


def draw_timelines(
    rng: np.random.Generator,
    U: int,
    C: int,
    mean_events: float,
    min_events: int,
    max_events: int,
    span_days: tuple[str, str],
    mean_gap_days: float,
    granularity: str,
) -> Timelines:
    """Users: location -> category taste; event counts; exponential gaps inside the span."""
    loc = rng.integers(0, len(LOCATIONS), U)
    loc_taste = rng.dirichlet(np.full(C, 0.3), len(LOCATIONS))
    taste = 0.7 * loc_taste[loc] + 0.3 * rng.dirichlet(np.ones(C), U)
    extra = rng.geometric(1.0 / max(mean_events - min_events + 1, 1.0), U) - 1
    lengths = np.minimum(min_events + extra, max_events).astype(np.int64)
    total = int(lengths.sum())
    ustart = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ev_u = np.repeat(np.arange(U), lengths)
    gaps = rng.exponential(mean_gap_days * DAY, total)
    gaps[ustart] = 0.0
    cs = np.cumsum(gaps)
    cs -= np.repeat(cs[ustart], lengths)
    first, last = to_unix(span_days[0]), to_unix(span_days[1])
    span = last + DAY - 1 - first
    dur = cs[ustart + lengths - 1]
    scale = np.minimum(1.0, span / np.maximum(dur, 1.0))
    t0 = first + rng.random(U) * (span - dur * scale)
    ts = (t0[ev_u] + cs * scale[ev_u]).astype(np.int64)
    if granularity == "day":
        ts -= ts % DAY
    return Timelines(loc, np.cumsum(taste, axis=1), lengths, ustart, ev_u, ts)


def draw_items(
    rng: np.random.Generator,
    cg: Catalogue,
    tl: Timelines,
    p_seasonal: float,
    p_successor: float,
) -> np.ndarray:
    """The item of every event ``[E]``: seasonal, else a successor, else by taste and
    popularity; vectorised over the users still active at each position."""
    U, C, K = len(tl.lengths), len(cg.cat_members), cg.succ.shape[1]
    seasons = len(SEASONS) if (cg.season >= 0).any() else 0
    ev_season = season_of(tl.ts)
    order = np.argsort(-tl.lengths, kind="stable")
    active_n = U - np.searchsorted(np.sort(tl.lengths), np.arange(tl.lengths.max()), side="right")
    items = np.zeros(len(tl.ts), np.int64)
    for t, n_t in enumerate(active_n):
        users = order[:n_t]
        idx = tl.ustart[users] + t
        r = rng.random((n_t, 4))
        chosen = np.zeros(n_t, np.int64)
        ss = ev_season[idx]
        for s in range(seasons):
            pick = (ss == s) & (r[:, 0] < p_seasonal)
            chosen[pick] = draw(cg.season_cdf[s], cg.season_members[s], r[pick, 1])
        if t > 0:
            follow = (chosen == 0) & (r[:, 2] < p_successor)
            k = np.searchsorted(cg.succ_cdf, r[follow, 1] * cg.succ_cdf[-1], side="right")
            chosen[follow] = cg.succ[items[idx[follow] - 1], np.minimum(k, K - 1)]
        fresh = chosen == 0
        c_of = (tl.taste_cdf[users[fresh]] < r[fresh, 3:4]).sum(1).clip(max=C - 1)
        fresh_idx = np.flatnonzero(fresh)
        for c in range(C):
            sel = fresh_idx[c_of == c]
            chosen[sel] = draw(cg.cat_cdf[c], cg.cat_members[c], r[sel, 1])
        items[idx] = chosen
    return items
