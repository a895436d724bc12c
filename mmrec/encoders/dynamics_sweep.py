"""The features of :class:`~mmrec.encoders.dynamics.RecentDynamics` in one compiled pass.

For ascending query times, each item's window counts and last event time are carried from one
time to the next (the events that entered a window are added, those that left it taken off,
cut by :meth:`EventLog.position`: events strictly before a time), and every feature of a row
is written in the same loop over the catalogue. The logarithms are read from tables that
``torch`` computed with the very op of the element-wise path, so the result is bitwise the one
of :meth:`RecentDynamics.features`' torch path (tested), at a fraction of its memory passes.

Used where every event time and query time is a whole number of days (the Amazon 2014 and 2018
files, and ``mmrec recommend --at DATE``): only then are the day tables exact. Numba compiles
the loop once per machine (``cache=True``); without numba (an environment given only some
wheels) the torch path runs instead, with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from mmrec.calendar import DAY
from mmrec.data.eventlog import EventLog

try:
    import numba
except ImportError:  # e.g. a GPU image given only some wheels: the torch path, same values
    numba = None

#: Largest table of ``log1p`` values built (counts or days); above it the torch path is used.
TABLE_MAX = 2**20


def _sweep(
    items: np.ndarray,  # [E] int64, the log's events by time
    times: np.ndarray,  # [E] int64
    t: np.ndarray,  # [Q] int64 ascending query times, in days
    hi: np.ndarray,  # [Q] int64 events before t
    lo: np.ndarray,  # [W, Q] int64 events before t - w
    counts: np.ndarray,  # [W, C] int32 window counts at t[0] (updated in place)
    last: np.ndarray,  # [C] int64 day of the last event before t[0] (updated in place)
    first: np.ndarray,  # [C] int64 day of the first event (or after every query: none)
    count_tab: np.ndarray,  # [M + 1] float32 log1p(count)
    trend_tab: np.ndarray,  # [M + 1] float32 log1p(count * short / long)
    day_tab: np.ndarray,  # [D + 1] float32 log1p(days)
    trend_s: int,  # index of the short window (-1: no trend feature)
    trend_l: int,
    day: int,
    out: np.ndarray,  # [F, Q, C] float32
) -> None:
    w_n, cols = counts.shape
    j = w_n + (1 if trend_s >= 0 else 0)
    for k in range(len(t)):
        if k > 0:
            for e in range(hi[k - 1], hi[k]):  # entered every window, and are the latest
                for w in range(w_n):
                    counts[w, items[e]] += 1
                last[items[e]] = times[e] // day
            for w in range(w_n):
                for e in range(lo[w, k - 1], lo[w, k]):  # left window w
                    counts[w, items[e]] -= 1
        now = t[k]
        for w in range(w_n):  # one stream per feature: loops the compiler vectorises
            for i in range(cols):
                out[w, k, i] = count_tab[counts[w, i]]
        if trend_s >= 0:
            for i in range(cols):
                out[w_n, k, i] = out[trend_s, k, i] - trend_tab[counts[trend_l, i]]
        for i in range(cols):
            seen = first[i] < now  # else no event before t: age and recency 0, the flag 1
            out[j, k, i] = day_tab[now - first[i]] if seen else np.float32(0.0)
            out[j + 1, k, i] = day_tab[now - last[i]] if seen else np.float32(0.0)
            out[j + 2, k, i] = np.float32(0.0) if seen else np.float32(1.0)


if numba is not None:
    _sweep = numba.njit(cache=True, nogil=True)(_sweep)


def sweep_features(
    log: EventLog,
    t: Tensor,
    windows: list[int],
    trend: tuple[int, int, float] | None,
    num_features: int,
    days_then_log1p,
) -> Tensor | None:
    """``[F, Q, N + 1]`` features at ascending whole-day times ``t [Q]`` (``windows``: lengths
    in seconds; ``trend``: ``(short, long, short / long)``), or None where this pass does not
    apply (a time or event off whole days, or a table over :data:`TABLE_MAX`)."""
    q, cols = len(t), log.num_items + 1
    if q == 0 or not log.whole_days or bool((t % DAY != 0).any()):
        return None
    if numba is None:
        warnings.warn(
            "numba is not installed: item-dynamics features take the slower torch path (the "
            "same values); `pip install numba` (a dependency of mmrec) for the compiled pass",
            stacklevel=3,
        )
        return None
    top = log.max_item_events
    first_day = int(log.times[0]) if len(log.times) else int(t[0])
    span = (int(t[-1]) - min(first_day, int(t[0]))) // DAY
    if top > TABLE_MAX or span > TABLE_MAX:
        return None
    ints = torch.arange(top + 1, dtype=torch.int32)
    count_tab = torch.log1p(ints).float()  # the ops of the torch path, on the same values
    trend_tab = torch.log1p(ints * trend[2]).float() if trend else count_tab
    day_tab = days_then_log1p(torch.arange(span + 1, dtype=torch.int64) * DAY)
    seconds = torch.tensor(windows, dtype=torch.int64)
    start = log.window_counts(t[:1], seconds)[0].contiguous()  # [W, N + 1]
    last = torch.div(log.last_before(t[:1])[0], DAY, rounding_mode="floor")  # [N + 1]
    # an item with no event is "first" after every query (its flag is read, not its day)
    first = torch.div(log.first_time.clamp(max=int(t[-1]) + DAY), DAY, rounding_mode="floor")
    lo = log.position((t[None, :] - seconds[:, None]).reshape(-1)).view(len(windows), q)
    out = torch.empty(num_features, q, cols)
    _sweep(
        log.items.numpy(),
        log.times.numpy(),
        torch.div(t, DAY, rounding_mode="floor").numpy(),
        log.position(t).numpy(),
        lo.contiguous().numpy(),
        start.numpy(),
        last.numpy(),
        first.numpy(),
        count_tab.numpy(),
        trend_tab.numpy(),
        day_tab.numpy(),
        trend[0] if trend else -1,
        trend[1] if trend else -1,
        DAY,
        out.numpy(),
    )
    return out
