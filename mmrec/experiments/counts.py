"""What the baselines count, read causally: consecutive events (training split, or every split
with the time of the next event), the event log of a folder, and exponentially decayed item
counts before any query time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mmrec.data.eventlog import EventLog

if TYPE_CHECKING:
    from mmrec.data.datamodule import AmazonDataModule


def training_transitions(dm: AmazonDataModule) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of consecutive training events of one user: ``(previous, next)`` items.

    Only the training split: a user's training events are the first ones of their time-sorted
    events (the datamodule checks that splits follow each other in time), and the training rows
    of ``dm.datasets["train"]`` span exactly them (inputs ``[begin, end)``, the last target at
    ``end``), so no validation or test event is read. Users with one training event add nothing.

    Returns:
        ``prev [P]`` and ``next [P]`` int64 item ids (``next`` directly followed ``prev``).
    """
    dm.setup()
    ds = dm.datasets["train"]
    items = ds.ev.items  # [E + 1] flat items sorted by user then time, sentinel last
    _, pos = spans(ds.rows.begin, ds.rows.end)  # [P] a training input and its next event
    return items[pos].numpy(), items[pos + 1].numpy()


def event_transitions(dm: AmazonDataModule) -> tuple[Tensor, Tensor, Tensor]:
    """Every pair of consecutive events of one user, all splits (what a shop has seen by the
    end of the log): ``(prev [P], next [P], time [P])`` int64, ``time`` = the next event's.

    Read from the datamodule's flat events (sorted by user, then time, then file order): the
    predict rows span each user's whole sequence. Cut each query with ``time < t``.
    """
    dm.setup()
    ds = dm.datasets["predict"]
    _, pos = spans(ds.rows.begin, ds.rows.end - 1)  # [P] every event but each user's last
    return ds.ev.items[pos], ds.ev.items[pos + 1], ds.ev.ts[pos + 1]


def spans(start: Tensor, stop: Tensor) -> tuple[Tensor, Tensor]:
    """Every position of the ranges ``[start[q], stop[q])`` (empty where ``stop <= start``):
    ``(row [M], index [M])``, the query ``q`` and the position, in query then position order."""
    lens = (stop - start).clamp_min(0)  # [Q]
    row = torch.repeat_interleave(torch.arange(len(lens)), lens)  # [M]
    first = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)  # [M] row's first slot
    return row, start[row] + torch.arange(len(row)) - first


def event_log(dm: AmazonDataModule) -> EventLog:
    """Every event of ``dm``'s folder, all splits (prepared first when ``dm`` is configured
    to); each query cuts it at its time (:class:`~mmrec.data.eventlog.EventLog`)."""
    dm.prepare_data()
    log = EventLog.from_folder(dm.data_dir)
    if log.num_items != dm.num_items:
        raise ValueError(
            f"{dm.data_dir}: event log of {log.num_items} items, meta.json {dm.num_items}"
        )
    return log


def per_time(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn(t)`` for ``t [Q]``, computed once per distinct time (rows of a batch share query
    times: one per day in day-granular data) and gathered back: ``[Q, ...]``."""
    times, inverse = torch.unique(torch.as_tensor(t).long(), return_inverse=True)
    return fn(times)[inverse]


class DecayedCounts:
    """Exponentially time-decayed event counts of every item before a query time ``t``:
    ``sum over events e of the item with time_e < t of 0.5 ** ((t - time_e) / half_life)``.

    Exact (to float64 rounding) for any ``t``, in the memory of the log's snapshots: the decayed
    sums of the first ``k * stride`` events (``stride`` of ``log``) are kept as of a reference
    time ``ref_k`` (the time of the last of them), so each query scales one snapshot by
    ``0.5 ** ((t - ref_k) / half_life)`` and adds the at most ``stride`` events between the
    snapshot and ``t``; every exponent is <= 0 (no overflow, whatever the time span). The cut
    at ``t`` is the log's (:meth:`~mmrec.data.eventlog.EventLog.position`). Memory:
    ``(snapshots + 1) * 8`` bytes per item.

    Args:
        log: The event log.
        half_life_seconds: Age at which an event weighs 1/2 (> 0).
    """

    def __init__(self, log: EventLog, half_life_seconds: float) -> None:
        if not half_life_seconds > 0:
            raise ValueError(f"half_life must be > 0, got {half_life_seconds}")
        self.log, self.half_life = log, float(half_life_seconds)
        items, times, stride = log.items, log.times, log.stride  # [E], [E] by time
        k, cols = len(items) // stride + 1, log.num_items + 1
        self.sums = torch.zeros(k, cols, dtype=torch.float64)  # [K, N + 1] as of ref
        self.ref = torch.zeros(k, dtype=torch.int64)  # [K]
        running = torch.zeros(cols, dtype=torch.float64)
        at = int(times[0]) if len(times) else 0
        self.ref[0] = at
        for s in range(1, k):  # k <= snapshots + 1: a short loop over chunks of events
            chunk = slice((s - 1) * stride, s * stride)
            now = int(times[s * stride - 1])
            running *= 2.0 ** ((at - now) / self.half_life)
            running.index_add_(0, items[chunk], self._weight(times[chunk] - now))
            self.sums[s], self.ref[s], at = running, now, now

    def _weight(self, age: Tensor) -> Tensor:
        """``0.5 ** (-age / half_life)`` in float64 for ``age`` (time - reference) <= 0."""
        return torch.exp2(age.to(torch.float64) / self.half_life)

    def before(self, t: Tensor) -> Tensor:
        """``[Q, N + 1]`` float64 decayed counts of the events strictly before each ``t [Q]``."""
        t = torch.as_tensor(t).long()
        stride, cols = self.log.stride, self.log.num_items + 1
        p = self.log.position(t)  # [Q] events before t
        snap = p // stride  # [Q] its first snap * stride events are before t
        out = self.sums[snap] * self._weight((self.ref[snap] - t).clamp_max(0))[:, None]
        row, event = spans(snap * stride, p)  # [M] the events after the snapshot, before t
        weight = self._weight(self.log.times[event] - t[row])
        out.view(-1).index_add_(0, row * cols + self.log.items[event], weight)
        return out

    def nbytes_per_item(self) -> float:
        """Bytes of state per catalogue item (the decayed snapshots)."""
        return self.sums.numel() * 8 / (self.log.num_items + 1)
