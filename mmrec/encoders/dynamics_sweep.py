"""The features of :class:`~mmrec.encoders.dynamics.RecentDynamics` in one compiled pass.

For ascending query times, each item's window counts and last event time are carried from one
time to the next (the events that entered a window are added, those that left it taken off,
cut by :meth:`EventLog.position`: events strictly before a time), and every feature of a row
is written in the same loop over the catalogue. After a gap that more events crossed than the
catalogue has items, the state starts afresh from the log's snapshots instead (cheaper than
sweeping the gap). The logarithms are read from tables that ``torch`` computed with the very op
of the element-wise path, so the features are bitwise those of
:meth:`RecentDynamics.features`' torch path (tested), at a fraction of its memory passes.

Outside autograd, :meth:`FeatureSweep.take_term` also runs the MLP in the compiled loop, on a
tile of items' features while they are in the first-level cache: the term without the features
ever reaching memory. It computes the MLP's function with float32 sums in another order than
``torch.addmm`` (the scores agree to ~1e-6, tested); training keeps the torch MLP (autograd).

The catalogue is cut into one column range per torch thread, each swept in its own Python
thread (the loop releases the GIL): no numba threading layer, so torch's threads are left
alone. Used where every event time and query time is a whole number of days (the Amazon 2014
and 2018 files, and ``mmrec recommend --at DATE``): only then are the day tables exact. Numba
compiles the loops once per machine (``cache=True``); without numba (an environment given only
some wheels) the torch path runs instead, with a warning.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from mmrec.calendar import DAY
from mmrec.data.eventlog import EventLog

try:
    import numba
except ImportError:  # e.g. a GPU image given only some wheels: the torch path, same values
    numba = None

#: Fewest columns (items) a thread of the pass is given: below, fewer threads.
MIN_COLUMNS = 4096

#: Bound on the states the pass starts afresh from (MB): times after a wide gap restart.
RESTART_MB = 64

#: Largest table of ``log1p`` values built (counts or days); above it the torch path is used.
TABLE_MAX = 2**20


def _advance(items, times, hi, lo, counts, last, day, k, c0, c1, restart, init_counts, init_last):
    """Bring the state of items ``c0 <= i < c1`` to time ``t[k]``: from the one at ``t[k - 1]``
    by the events that entered and left each window, or, at a restart (``restart[k] >= 0``:
    the first time, and after gaps that more events crossed than the catalogue has items),
    from the state the log's snapshots gave for it."""
    s = restart[k]
    w_n = counts.shape[0]
    if s >= 0:
        for w in range(w_n):
            for i in range(c0, c1):
                counts[w, i] = init_counts[s, w, i]
        for i in range(c0, c1):
            last[i] = init_last[s, i]
        return
    for e in range(hi[k - 1], hi[k]):  # entered every window, and are the latest
        i = items[e]
        if c0 <= i < c1:
            for w in range(w_n):
                counts[w, i] += 1
            last[i] = times[e] // day
    for w in range(w_n):
        for e in range(lo[w, k - 1], lo[w, k]):  # left window w
            i = items[e]
            if c0 <= i < c1:
                counts[w, i] -= 1


def _sweep(
    items: np.ndarray,  # [E] int64, the log's events by time
    times: np.ndarray,  # [E] int64
    t: np.ndarray,  # [Q] int64 ascending query times, in days
    hi: np.ndarray,  # [Q] int64 events before t
    lo: np.ndarray,  # [W, Q] int64 events before t - w
    counts: np.ndarray,  # [W, C] int32 window counts at the current time (updated in place)
    last: np.ndarray,  # [C] int64 day of the last event before it (updated in place)
    restart: np.ndarray,  # [Q] int64 row of init_* to start time k from (-1: sweep to it)
    init_counts: np.ndarray,  # [S, W, C] int32 window counts at the restart times
    init_last: np.ndarray,  # [S, C] int64 day of the last event before them
    first: np.ndarray,  # [C] int64 day of the first event (or after every query: none)
    count_tab: np.ndarray,  # [M + 1] float32 log1p(count)
    trend_tab: np.ndarray,  # [M + 1] float32 log1p(count * short / long)
    day_tab: np.ndarray,  # [D + 1] float32 log1p(days)
    trend_s: int,  # index of the short window (-1: no trend feature)
    trend_l: int,
    day: int,
    k0: int,  # this call's times: t[k0:k1], from the state at t[k0 - 1] (k0 = 0: a restart)
    k1: int,
    c0: int,  # this call's columns: items c0 <= i < c1 (other calls own the rest)
    c1: int,
    out: np.ndarray,  # [F, k1 - k0, C] float32
) -> None:
    w_n = counts.shape[0]
    j = w_n + (1 if trend_s >= 0 else 0)
    for k in range(k0, k1):
        _advance(
            items, times, hi, lo, counts, last, day, k, c0, c1, restart, init_counts, init_last
        )
        now, r = t[k], k - k0
        for w in range(w_n):  # one stream per feature: loops the compiler vectorises
            for i in range(c0, c1):
                out[w, r, i] = count_tab[counts[w, i]]
        if trend_s >= 0:
            for i in range(c0, c1):
                out[w_n, r, i] = out[trend_s, r, i] - trend_tab[counts[trend_l, i]]
        for i in range(c0, c1):
            seen = first[i] < now  # else no event before t: age and recency 0, the flag 1
            out[j, r, i] = day_tab[now - first[i]] if seen else np.float32(0.0)
            out[j + 1, r, i] = day_tab[now - last[i]] if seen else np.float32(0.0)
            out[j + 2, r, i] = np.float32(0.0) if seen else np.float32(1.0)


#: Items whose features the fused kernel holds at once (they stay in the first-level cache).
TILE = 512


def _sweep_term(
    items, times, t, hi, lo, counts, last, restart, init_counts, init_last, first,
    count_tab, trend_tab, day_tab, trend_s, trend_l, day, k0, k1, c0, c1,  # as for _sweep
    w1: np.ndarray,  # [H, F] float32: the MLP's first layer
    b1: np.ndarray,  # [H]
    w2: np.ndarray,  # [H]: its last layer
    b2: float,
    out: np.ndarray,  # [k1 - k0, C] float32: the term
) -> None:  # fmt: skip
    """:func:`_sweep`'s features fed, a tile of items at a time, through the MLP
    ``w2 . relu(w1 x + b1) + b2``: the term without the features ever leaving the cache (the
    same function as the torch MLP; float32 sums in another order, so not bitwise)."""
    w_n, h_n, f_n = counts.shape[0], w1.shape[0], w1.shape[1]
    j = w_n + (1 if trend_s >= 0 else 0)
    x = np.empty((f_n, TILE), np.float32)
    acc = np.empty(TILE, np.float32)
    o = np.empty(TILE, np.float32)
    zero, one = np.float32(0.0), np.float32(1.0)
    for k in range(k0, k1):
        _advance(
            items, times, hi, lo, counts, last, day, k, c0, c1, restart, init_counts, init_last
        )
        now, r = t[k], k - k0
        for a in range(c0, c1, TILE):
            n = min(TILE, c1 - a)
            for w in range(w_n):
                for i in range(n):
                    x[w, i] = count_tab[counts[w, a + i]]
            if trend_s >= 0:
                for i in range(n):
                    x[w_n, i] = x[trend_s, i] - trend_tab[counts[trend_l, a + i]]
            for i in range(n):
                seen = first[a + i] < now
                x[j, i] = day_tab[now - first[a + i]] if seen else zero
                x[j + 1, i] = day_tab[now - last[a + i]] if seen else zero
                x[j + 2, i] = zero if seen else one
            for i in range(n):
                o[i] = zero
            for h in range(h_n):
                wf = w1[h, 0]
                for i in range(n):
                    acc[i] = wf * x[0, i]
                for f in range(1, f_n):
                    wf = w1[h, f]
                    for i in range(n):
                        acc[i] += wf * x[f, i]
                bh, vh = b1[h], w2[h]
                for i in range(n):
                    v = acc[i] + bh
                    o[i] += vh * (v if v > zero else zero)
            for i in range(n):
                out[r, a + i] = o[i] + b2


if numba is not None:
    _advance = numba.njit(cache=True, nogil=True, inline="always")(_advance)
    _sweep = numba.njit(cache=True, nogil=True)(_sweep)
    _sweep_term = numba.njit(cache=True, nogil=True)(_sweep_term)


class FeatureSweep:
    """The compiled pass over ascending whole-day times ``t [Q]``.

    ``take(n)`` returns the features ``[F, n, N + 1]`` of the next ``n`` times and
    ``take_term(n, mlp)`` the MLP's term ``[n, N + 1]`` (the state is carried from one call to
    the next). Items are independent, so the catalogue is cut into one column range per torch
    thread, each swept by the compiled loop in its own Python thread (the loop releases the
    GIL): no numba threading layer is used, torch's thread pool and settings are left alone.
    :meth:`start` returns None where the pass does not apply.
    """

    def __init__(self, args: tuple, q: int, cols: int, num_features: int) -> None:
        self._args, self.q, self.cols, self.num_features = args, q, cols, num_features
        self.done = 0
        parts = min(torch.get_num_threads(), max(1, cols // MIN_COLUMNS))
        self._edges = [cols * p // parts for p in range(parts + 1)]

    @classmethod
    def start(
        cls,
        log: EventLog,
        t: Tensor,
        windows: list[int],
        trend: tuple[int, int, float] | None,
        num_features: int,
        days_then_log1p,
    ) -> FeatureSweep | None:
        """A sweep over ascending times ``t [Q]`` (``windows``: lengths in seconds; ``trend``:
        ``(short, long, short / long)``), or None where this pass does not apply (a time or
        event off whole days, a table over :data:`TABLE_MAX`, or numba missing)."""
        q, cols = len(t), log.num_items + 1
        if q == 0 or not log.whole_days or bool((t % DAY != 0).any()):
            return None
        if numba is None:
            warnings.warn(
                "numba is not installed: item-dynamics features take the slower torch path (the "
                "same values); `pip install numba` (a dependency of mmrec) for the compiled pass",
                stacklevel=4,
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
        # an item with no event is "first" after every query (its flag is read, not its day)
        first = torch.div(log.first_time.clamp(max=int(t[-1]) + DAY), DAY, rounding_mode="floor")
        hi = log.position(t)  # [Q]
        lo = log.position((t[None, :] - seconds[:, None]).reshape(-1)).view(len(windows), q)
        # Restart (from the log's snapshots) where more events cross the gap from the previous
        # time than the catalogue has items: sweeping them would cost more than a fresh state.
        crossed = (hi[1:] - hi[:-1]) + (lo[:, 1:] - lo[:, :-1]).sum(0)  # [Q - 1]
        gaps = torch.nonzero(crossed > cols).view(-1)
        keep = max(0, RESTART_MB * 2**20 // (cols * (4 * len(windows) + 8)) - 1)
        if len(gaps) > keep:  # bounded memory: the widest gaps restart
            gaps = torch.sort(gaps[torch.topk(crossed[gaps], keep).indices]).values
        at = torch.cat([torch.zeros(1, dtype=torch.long), gaps + 1])  # [S] times that restart
        restart = torch.full((q,), -1, dtype=torch.long)
        restart[at] = torch.arange(len(at))
        init_counts = log.window_counts(t[at], seconds).contiguous()  # [S, W, N + 1]
        init_last = torch.div(log.last_before(t[at]), DAY, rounding_mode="floor")  # [S, N + 1]
        args = (
            log.items.numpy(),
            log.times.numpy(),
            torch.div(t, DAY, rounding_mode="floor").numpy(),
            hi.numpy(),
            lo.contiguous().numpy(),
            torch.empty(len(windows), cols, dtype=torch.int32).numpy(),
            torch.empty(cols, dtype=torch.int64).numpy(),
            restart.numpy(),
            init_counts.numpy(),
            init_last.contiguous().numpy(),
            first.numpy(),
            count_tab.numpy(),
            trend_tab.numpy(),
            day_tab.numpy(),
            trend[0] if trend else -1,
            trend[1] if trend else -1,
            DAY,
        )
        return cls(args, q, cols, num_features)

    def take(self, n: int) -> Tensor:
        """``[F, n, N + 1]``: the features of the next ``n`` times (fewer at the end)."""
        k0, k1 = self.done, min(self.q, self.done + n)
        out = torch.empty(self.num_features, k1 - k0, self.cols)
        self._run(_sweep, k0, k1, (), out.numpy())
        self.done = k1
        return out

    def take_term(self, n: int, mlp: torch.nn.Sequential) -> Tensor:
        """``[n, N + 1]``: the term ``mlp`` (Linear(F, H), ReLU, Linear(H, 1), on the CPU)
        gives the features of the next ``n`` times, computed by the fused kernel."""
        k0, k1 = self.done, min(self.q, self.done + n)
        first, last = mlp[0], mlp[2]
        weights = (
            first.weight.detach().float().contiguous().numpy(),
            first.bias.detach().float().contiguous().numpy(),
            last.weight.detach().float().reshape(-1).contiguous().numpy(),
            np.float32(last.bias.detach().float().item()),
        )
        out = torch.empty(k1 - k0, self.cols)
        self._run(_sweep_term, k0, k1, weights, out.numpy())
        self.done = k1
        return out

    def _run(self, kernel, k0: int, k1: int, extra: tuple, dst: np.ndarray) -> None:
        """``kernel`` over times ``k0:k1``, one column range per thread."""
        edges = self._edges
        jobs = [
            _pool(len(edges) - 2).submit(kernel, *self._args, k0, k1, a, b, *extra, dst)
            for a, b in zip(edges[1:-1], edges[2:], strict=True)
        ]
        kernel(*self._args, k0, k1, edges[0], edges[1], *extra, dst)  # the first range: here
        for job in jobs:
            job.result()


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # the threads and their number


def _pool(workers: int) -> ThreadPoolExecutor:
    """Threads that run the compiled pass beside the caller's, kept from call to call (an
    evaluation calls it once per batch: starting threads each time cost as much as the pass)."""
    global _POOL
    if _POOL is None or _POOL[1] < workers:
        if _POOL is not None:
            _POOL[0].shutdown(wait=False)
        _POOL = (ThreadPoolExecutor(workers, thread_name_prefix="mmrec-dynamics"), workers)
    return _POOL[0]


def sweep_features(*args) -> Tensor | None:
    """``[F, Q, N + 1]``: the features at every time of :meth:`FeatureSweep.start` (the same
    arguments) in one call, or None where the pass does not apply."""
    sweep = FeatureSweep.start(*args)
    return None if sweep is None else sweep.take(sweep.q)
