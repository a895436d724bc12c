"""The event log as of a query time: for every item at once, its events strictly before that
time (counts, last and first event), exact, in memory bounded per item (snapshots + deltas).

Item dynamics, recency baselines and serving read the log through this one class, so the
causal cut (an event at or after the query time is never seen) lives in one place.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from mmrec.calendar import DAY

#: ``last_before`` of an item with no event before the query time.
NEVER = -(2**62)


class EventLog:
    """Item events sorted by time, answering "as of time ``t``" for the whole catalogue.

    ``counts_before(t)`` is the number of each item's events with ``timestamp < t``; with
    ``t - w`` it gives the count of a window ``[t - w, t)``. Exact for any ``t``: the counts of
    the first ``k * stride`` events are kept as snapshots (``max_snapshots`` of them), and the
    at most ``stride`` events between the snapshot and ``t`` are added per query. Memory:
    ``(max_snapshots + 1) * 12`` bytes per item (int32 counts + int64 last times) plus 16 bytes
    per event (4 more with users), whatever the time span (no per-day buckets).

    Args:
        items: ``[E]`` item ids (1..N; 0, the padding item, is allowed and never counted apart).
        times: ``[E]`` unix seconds of the events, in any order (ties keep the given order).
        num_items: ``N``, so that results are ``[Q, N + 1]`` (column 0 is the padding item).
        max_snapshots: Snapshots kept; more means less work per query, more memory.
        users: ``[E]`` who made each event (any integer ids), or None. With them the log also
            answers :meth:`transitions_before` (what followed an item, as of a time):
            consecutive events of one user, in time order (ties in the given order). Kept as
            int32 where they fit (4 bytes an event); the transitions (24 bytes an event) are
            built on the first such query, so a log whose readers never ask costs no more.
    """

    def __init__(
        self,
        items: Tensor,
        times: Tensor,
        num_items: int,
        max_snapshots: int = 64,
        users: Tensor | None = None,
    ):
        items, times = torch.as_tensor(items).long(), torch.as_tensor(times).long()
        if items.shape != times.shape or items.dim() != 1:
            raise ValueError(f"items {tuple(items.shape)} and times {tuple(times.shape)}: [E] each")
        if users is not None:
            users = torch.as_tensor(users).long()
            if users.shape != items.shape:
                raise ValueError(f"users {tuple(users.shape)} and items {tuple(items.shape)}")
        if len(items) and (int(items.min()) < 0 or int(items.max()) > num_items):
            raise ValueError(f"item ids must be in 0..{num_items}")
        if max_snapshots < 1:
            raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots}")
        order = torch.sort(times, stable=True).indices
        self.items, self.times = items[order], times[order]  # [E] each, by time
        #: ``[E]`` who made each event, by time (None: not known).
        self.users = None if users is None else users[order]
        if self.users is not None and len(self.users) and int(self.users.abs().max()) < 2**31:
            self.users = self.users.to(torch.int32)
        self.num_items = int(num_items)
        n, cols = len(self.items), self.num_items + 1
        self.stride = max(1, math.ceil(n / max_snapshots))
        k = n // self.stride + 1  # snapshots at 0, stride, 2 * stride ... <= n events
        counts = torch.zeros(k, cols, dtype=torch.int32)
        last = torch.full((k, cols), NEVER, dtype=torch.int64)
        running, seen = torch.zeros(cols, dtype=torch.int32), torch.full((cols,), NEVER)
        for s in range(1, k):  # k <= max_snapshots + 1: a short loop over chunks of events
            chunk = slice((s - 1) * self.stride, s * self.stride)
            running += torch.bincount(self.items[chunk], minlength=cols).to(torch.int32)
            seen = seen.scatter_reduce(0, self.items[chunk], self.times[chunk], "amax")
            counts[s], last[s] = running, seen
        self._counts, self._last = counts, last  # [K, N + 1] each
        # [N + 1] time of each item's first event (-NEVER, after any query time: none)
        self.first_time = torch.full((cols,), -NEVER).scatter_reduce(
            0, self.items, self.times, "amin"
        )
        #: Whether every event time is a whole number of days (the Amazon 2014 and 2018 files).
        self.whole_days = bool((self.times % DAY == 0).all())
        #: The most events any item has: a bound of every count the log answers.
        self.max_item_events = int(torch.bincount(self.items).max()) if n else 0
        #: Whether the log knows who made each event (:meth:`transitions_before` needs it).
        self.has_users = users is not None
        self._trans_keys: Tensor | None = None  # built by _transitions on first use

    def _transitions(self) -> None:
        """Every pair of consecutive events of one user ``(prev, next, time of next)``, sorted
        by ``prev`` then time (a CSR by previous item in time order), keyed for searchsorted."""
        prev = nxt = when = torch.zeros(0, dtype=torch.long)
        if self.users is not None and len(self.items) > 1:  # events by time, ties as given
            order = torch.sort(self.users, stable=True).indices  # user, time, given order
            u, it, ts = self.users[order], self.items[order], self.times[order]
            same = u[1:] == u[:-1]  # [E - 1] consecutive events of one user
            prev, nxt, when = it[:-1][same], it[1:][same], ts[1:][same]
        self._t0 = int(when.min()) if len(when) else 0
        self._span = (int(when.max()) - self._t0 if len(when) else 0) + 2  # > any time - t0
        keys, order = torch.sort(prev * self._span + (when - self._t0), stable=True)
        self._trans_keys, self._trans_next, self._trans_time = keys, nxt[order], when[order]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_folder(cls, data_dir: str | Path, max_snapshots: int = 64) -> EventLog:
        """Every event of a prepared dataset folder (all splits: what a shop knows up to each
        query time; the cut at the query time is made by every query)."""
        path = Path(data_dir) / "interactions.parquet"
        columns = pl.read_parquet_schema(path)
        df = pl.read_parquet(
            path, columns=[c for c in ("item_idx", "timestamp", "user_idx") if c in columns]
        )
        meta = Path(data_dir) / "meta.json"
        num_items = int(df["item_idx"].max() or 0)
        if meta.is_file():
            import json

            num_items = int(json.loads(meta.read_text())["num_items"])
        return cls(
            torch.from_numpy(df["item_idx"].to_numpy().astype(np.int64)),
            torch.from_numpy(df["timestamp"].to_numpy().astype(np.int64)),
            num_items,
            max_snapshots,
            (
                torch.from_numpy(df["user_idx"].to_numpy().astype(np.int64))
                if "user_idx" in df.columns
                else None
            ),
        )

    def transitions_before(self, prev: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What followed each item ``prev [Q]`` before each time ``t [Q]``: every transition
        ``prev[q] -> next`` (consecutive events of one user) whose ``next`` event happened
        strictly before ``t[q]``, as ``(row [M], next [M], time [M])`` (the query, the next
        item, its time), in query then time order. A query costs its own transitions only.
        Needs the log's users (``users=``); ``prev`` 0 (no history) has none."""
        if not self.has_users:
            raise ValueError(
                "this event log does not know who made each event (no users), so it cannot say "
                "what followed what: build it with users= (EventLog.from_folder reads user_idx)"
            )
        if self._trans_keys is None:
            self._transitions()
        prev, t = torch.as_tensor(prev).long().reshape(-1), torch.as_tensor(t).long().reshape(-1)
        start_key = prev * self._span
        cut = start_key + (t - self._t0).clamp(0, self._span - 1)  # key of (prev, t)
        start = torch.searchsorted(self._trans_keys, start_key)
        stop = torch.searchsorted(self._trans_keys, cut)  # time - t0 < t - t0: time < t
        stop = torch.where(prev > 0, stop, start)
        lens = (stop - start).clamp_min(0)
        row = torch.repeat_interleave(torch.arange(len(lens)), lens)
        first = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        idx = start[row] + torch.arange(len(row)) - first
        return row, self._trans_next[idx], self._trans_time[idx]

    def nbytes_per_item(self) -> float:
        """Bytes of state per catalogue item (snapshots), as the benchmark reports it."""
        snap = self._counts.numel() * 4 + self._last.numel() * 8 + self.first_time.numel() * 8
        return snap / (self.num_items + 1)

    # ------------------------------------------------------------------ queries
    def position(self, t: Tensor) -> Tensor:
        """``[Q]`` number of events strictly before each query time ``t [Q]``."""
        return torch.searchsorted(self.times, torch.as_tensor(t).long(), right=False)

    def _deltas(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Snapshot of each query, and the events after it and before ``t``: ``(snap [Q],
        row [M], event [M])`` (query row and flat event index of each delta event)."""
        p = self.position(t)  # [Q]
        snap = p // self.stride
        lens = p - snap * self.stride  # [Q] < stride
        row = torch.repeat_interleave(torch.arange(len(p)), lens)  # [M]
        first = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        offset = torch.arange(int(lens.sum())) - first
        event = torch.repeat_interleave(snap * self.stride, lens) + offset  # [M]
        return snap, row, event

    def counts_before(self, t: Tensor) -> Tensor:
        """``[Q, N + 1]`` int32: each item's events with ``timestamp < t`` for each ``t [Q]``."""
        snap, row, event = self._deltas(t)
        out = self._counts[snap]  # [Q, N + 1] (a copy)
        cols = self.num_items + 1
        flat = out.view(-1)
        flat.index_add_(0, row * cols + self.items[event], torch.ones_like(row, dtype=torch.int32))
        return out

    def window_counts(self, t: Tensor, seconds: Tensor | list[float]) -> Tensor:
        """``[Q, W, N + 1]`` int32: each item's events in ``[t - w, t)`` for each window ``w``
        (seconds) of ``seconds [W]``."""
        t = torch.as_tensor(t).long()
        w = torch.as_tensor(seconds, dtype=torch.float64).round().long()  # [W]
        starts = (t[:, None] - w[None, :]).reshape(-1)  # [Q * W]
        both = self.counts_before(torch.cat([t, starts]))  # [Q + Q * W, N + 1]
        now, before = both[: len(t)], both[len(t) :].view(len(t), len(w), -1)
        return now[:, None, :] - before

    def window_counts_ascending(self, t: Tensor, seconds: int, out: Tensor) -> Tensor:
        """``window_counts(t, [seconds])[:, 0]`` (events in ``[t - seconds, t)``) for
        ascending times ``t [Q]``, into ``out [Q, N + 1]`` int32.

        A row whose window moved by few events since the previous time is that row plus the
        events that entered the window minus those that left it (both cut by :meth:`position`:
        events strictly before a time), by a running sum; the others (the first, and those after
        a gap of more than ``self.stride`` events) are the log's own query. Close times (a batch's
        distinct days) then cost a pass or two over their rows, not two snapshots and deltas each.
        """
        q, cols = len(t), self.num_items + 1
        hi, lo = self.position(t), self.position(t - seconds)  # [Q] each
        moved = (hi[1:] - hi[:-1]) + (lo[1:] - lo[:-1])  # [Q - 1] events in or out of the window
        fresh = torch.ones(q, dtype=torch.bool)
        fresh[1:] = moved > self.stride
        starts = fresh.nonzero()[:, 0]  # [S] rows read from the log
        out.zero_()
        out[starts] = self.window_counts(t[starts], [seconds])[:, 0]
        swept = ~fresh[1:]  # [Q - 1] rows 1.. that add the events since the previous time
        for p, sign in ((hi, 1), (lo, -1)):
            lens = (p[1:] - p[:-1]) * swept  # [Q - 1]
            total = int(lens.sum())
            if total:
                row = torch.repeat_interleave(torch.arange(1, q), lens)  # [M] row of each event
                first = torch.repeat_interleave(p[:-1], lens)  # the previous time's cut
                offset = torch.arange(total) - torch.repeat_interleave(
                    torch.cumsum(lens, 0) - lens, lens
                )
                at = row * cols + self.items[first + offset]
                out.view(-1).index_add_(0, at, torch.full((total,), sign, dtype=torch.int32))
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), q], strict=True):
            if b - a > 1:
                torch.cumsum(out[a:b], 0, out=out[a:b])  # a running sum from each read row
        return out

    def last_before(self, t: Tensor) -> Tensor:
        """``[Q, N + 1]`` int64: time of each item's last event before ``t`` (``NEVER``: none)."""
        snap, row, event = self._deltas(t)
        out = self._last[snap]  # [Q, N + 1]
        cols = self.num_items + 1
        flat = out.view(-1)
        return flat.scatter_reduce(
            0, row * cols + self.items[event], self.times[event], "amax"
        ).view_as(out)
