"""Batch building for AmazonDataModule: flat event tensors, split rows, samplers, datasets.

Everything here works on whole batches with tensor gathers; no Python runs per event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler


def _dist_world() -> tuple[int, int]:
    """``(num_replicas, rank)`` of the initialised process group, else ``(1, 0)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sampler: rank ``r`` of ``W`` gets rows ``r, r+W, r+2W, ...``; no padding.

    Lightning's ``DistributedSampler`` repeats rows so that every rank has the same count, which
    would count some users twice in ranking metrics. Here shards are disjoint and their union is
    every row exactly once; sizes differ by at most one row (so ranks may run one batch more or
    fewer: never call collectives per eval step). Being a ``DistributedSampler`` subclass,
    Lightning leaves it in place whatever ``trainer.use_distributed_sampler`` is set to.

    Args:
        dataset: Anything with ``len()``.
        num_replicas: World size; default: the process group's, or 1 without one.
        rank: This process's rank; default: the process group's, or 0 without one.
        lengths: Optional ``[len(dataset)]`` row lengths: the shard is then visited shortest
            first (stable), so trimmed batches carry little padding; metrics do not depend on
            the order. None: row order.
    """

    def __init__(
        self, dataset: Any, num_replicas: int | None = None, rank: int | None = None,
        lengths: Tensor | None = None,
    ):
        world, me = _dist_world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = me if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        if self.lengths is not None and len(self.lengths) != self.total_size:
            raise ValueError(f"lengths has {len(self.lengths)} rows, the dataset {self.total_size}")

    def __iter__(self):
        rows = torch.arange(self.rank, self.total_size, self.num_replicas)
        if self.lengths is not None:
            rows = rows[torch.sort(self.lengths[rows], stable=True).indices]
        return iter(rows.tolist())

    def __len__(self) -> int:
        return self.num_samples


class LengthBucketSampler(DistributedSampler):
    """Training sampler: shuffled rows, batched so that each batch holds rows of similar length.

    Every epoch this rank's shuffled shard (exactly ``DistributedSampler``'s: seed + epoch,
    padded to equal size across ranks) is cut into windows of ``window * batch_size`` rows;
    each window is sorted by row length (ties stay in shuffled order) and cut into batches, and
    the batches' order is shuffled (a final partial batch stays last). Since a batch is trimmed
    to its longest row, this removes most padding: on Beauty 2014 histories average 7 events
    but almost every random batch of 256 holds one of 50. Every row is still seen once per
    epoch. The DataLoader must use the same ``batch_size``; ``window=1`` gives plain shuffling.

    Args:
        dataset: A dataset with ``lengths()`` (``SequenceDataset``).
        batch_size: The loader's batch size.
        window: Batches per sorting window (larger: less padding, less random batches; see
            ``AmazonDataModule``'s ``bucket_window`` for what that cost on a small set).
        num_replicas: World size; default: the process group's, or 1 without one.
        rank: This process's rank; default: the process group's, or 0 without one.
        seed: Shuffle seed (epoch ``e`` uses ``seed + e``, via ``set_epoch``).
    """

    def __init__(
        self, dataset: Any, batch_size: int, window: int = 50,
        num_replicas: int | None = None, rank: int | None = None, seed: int = 0,
    ):
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size} and {window}")
        world, me = _dist_world()
        super().__init__(
            dataset, num_replicas=world if num_replicas is None else num_replicas,
            rank=me if rank is None else rank, shuffle=True, seed=seed,
        )
        self.batch_size, self.window = batch_size, window
        self._lengths = torch.as_tensor(dataset.lengths())

    def __iter__(self):
        idx = torch.as_tensor(list(super().__iter__()), dtype=torch.long)
        if self.window == 1 or len(idx) == 0:
            return iter(idx.tolist())
        size = self.batch_size * self.window
        batches: list[Tensor] = []
        for start in range(0, len(idx), size):
            chunk = idx[start : start + size]
            chunk = chunk[torch.sort(self._lengths[chunk], stable=True).indices]
            batches.extend(chunk.split(self.batch_size))
        last = batches.pop() if len(batches[-1]) < self.batch_size else None
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch + 7919)  # independent of the row shuffle
        order = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if last is not None:
            order.append(last)
        return iter(torch.cat(order).tolist())


@dataclass
class _Events:
    """Every interaction as flat tensors, sorted by user then time (the parquet order).

    Index ``N`` is a sentinel padding event (item 0, time 0, rating NaN) that pad slots read.
    """

    items: Tensor  # [N+1] int64
    ts: Tensor  # [N+1] int64
    ratings: Tensor  # [N+1] float32, NaN where missing
    ex_items: Tensor  # [X+1] int64: items of events that are the user's first with that item
    ex_cum: Tensor  # [N+1] int64: number of such events before each flat index


@dataclass
class _Rows:
    """One loader's rows: a user's history ``[begin, end)`` in the flat arrays, plus targets."""

    user: Tensor  # [R] user_idx
    begin: Tensor  # [R] flat index of the user's first event
    end: Tensor  # [R] history end (exclusive)
    qlast: Tensor  # [R] query time at the last history position
    tgt_start: Tensor  # [R] offset into tgt_items
    tgt_cnt: Tensor  # [R] number of targets (0 in training and prediction)
    tgt_items: Tensor  # [T_all+1] int64, deduplicated targets per row in time order, 0 sentinel


def _identity(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch


def _take(flat: Tensor, idx: Tensor) -> Tensor:
    """``flat[idx]`` for any-shaped ``idx`` via ``index_select`` (much faster than fancy indexing)."""
    return flat.index_select(0, idx.reshape(-1)).view(idx.shape)


def _gather_ragged(flat: Tensor, start: Tensor, cnt: Tensor) -> Tensor:
    """Rows ``flat[start_b : start_b + cnt_b]``, right-padded with 0: ``[B, max(1, max cnt)]``.

    ``flat`` ends with a 0 sentinel that padded slots point at.
    """
    width = max(int(cnt.max()) if cnt.numel() else 0, 1)
    ar = torch.arange(width)
    idx = torch.where(ar < cnt[:, None], start[:, None] + ar, flat.numel() - 1)  # [B, W]
    return _take(flat, idx)


class SequenceDataset(Dataset):
    """Rows of one split; ``__getitems__`` builds a whole batch dict with a few tensor gathers.

    Sequences are left-padded (the most recent event at the last position). With ``trim``
    the batch is only as wide as its longest row (at most ``max_len``), so a batch of short
    histories does not pay for ``max_len`` positions; otherwise every batch is ``max_len`` wide.

    With ``pack`` (training rows only) the batch's users are packed into as few rows of width
    ``max_len`` as first-fit-decreasing bin packing needs: each user's window is a contiguous
    segment, ``segments [R, L]`` numbers them (0: padding) and ``positions [R, L]`` counts
    from each segment's start. The sequence head then attends only within a segment and
    encoders that look at neighbouring slots stop at segment borders, so each user's hidden
    states and loss terms are those of the unpacked batch (tested) while the transformer runs
    on ~7x fewer slots on Beauty 2014 (a random batch of 256 almost always holds one history
    of 50, so trimming alone leaves most slots padding). ``user_idx`` is then the batch's
    users, not one per row.

    Args:
        events: The flat event tensors.
        rows: The rows of this split.
        max_len: ``L``, the history window.
        train: Training rows (``targets [B, L]``) or evaluation rows (``target_items`` etc.).
        exclude_history: Fill ``exclude_items`` with the whole history (else a ``[B, 1]`` of 0).
        trim: Cut the left padding that every row of a batch shares.
        pack: Pack training rows into shared rows (see above); ignored for evaluation rows.
    """

    def __init__(
        self, events: _Events, rows: _Rows, max_len: int, train: bool,
        exclude_history: bool = True, trim: bool = True, pack: bool = False,
    ):
        self.ev, self.rows, self.max_len = events, rows, max_len
        self.train, self.exclude_history, self.trim = train, exclude_history, trim
        self.pack = pack
        self._ar = torch.arange(max_len)
        self._mean_len = float(self.lengths().float().mean()) if len(self) else 1.0

    def __len__(self) -> int:
        return int(self.rows.user.numel())

    def lengths(self) -> Tensor:
        """Positions each row fills, ``min(history, max_len)``: ``[R]`` (for length bucketing)."""
        return (self.rows.end - self.rows.begin).clamp(max=self.max_len)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int] | Tensor) -> dict[str, Tensor]:
        r = torch.as_tensor(indices, dtype=torch.long)
        if self.pack and self.train and len(r):
            return self._packed(r)
        ev, rows, pad = self.ev, self.rows, self.ev.items.numel() - 1  # pad: the sentinel event
        begin, end = rows.begin[r], rows.end[r]  # [B]
        width = self.max_len
        if self.trim and len(r):
            width = max(1, min(self.max_len, int((end - begin).max())))
        pos = end[:, None] - width + self._ar[:width]  # [B, L] flat index of each slot
        mask = pos >= begin[:, None]
        idx = torch.where(mask, pos, pad)
        nxt = torch.where(mask, pos + 1, pad)  # the event after each slot (<= end)
        batch = {
            "item_ids": _take(ev.items, idx),
            "mask": mask,
            "timestamps": _take(ev.ts, idx),
            "ratings": _take(ev.ratings, idx),
            # the next event's time inside the history, the row's query time after its end
            "query_time": torch.where(
                pos + 1 < end[:, None], _take(ev.ts, nxt), rows.qlast[r, None]
            ),
            "user_idx": rows.user[r],
        }
        if self.train:
            batch["targets"] = _take(ev.items, nxt)
            # tokens in this batch / tokens in an average batch of as many rows: the module
            # scales the batch-mean loss by it, so every training position weighs the same
            # however batches are grouped (length-bucketed batches differ 10x in tokens)
            batch["loss_weight"] = (mask.sum() / (len(r) * self._mean_len)).float()
            return batch
        batch["target_items"] = _gather_ragged(rows.tgt_items, rows.tgt_start[r], rows.tgt_cnt[r])
        if self.exclude_history:
            lo = ev.ex_cum[begin]
            batch["exclude_items"] = _gather_ragged(ev.ex_items, lo, ev.ex_cum[end] - lo)
        else:
            batch["exclude_items"] = torch.zeros(len(r), 1, dtype=torch.long)
        batch["history_len"] = end - begin
        batch["target_time"] = rows.qlast[r]
        return batch

    def _packed(self, r: Tensor) -> dict[str, Tensor]:
        """Training batch of rows ``r`` packed into shared rows (first-fit decreasing)."""
        ev, rows, pad = self.ev, self.rows, self.ev.items.numel() - 1
        end = rows.end[r]
        n = (end - rows.begin[r]).clamp(max=self.max_len)  # [B] slots per user (>= 1)
        bin_of, offset = _first_fit_decreasing(n.tolist(), self.max_len)
        fill = int((torch.as_tensor(offset) + n).max())  # the fullest row
        width = fill if self.trim else self.max_len
        starts = torch.cumsum(n, 0) - n
        k = torch.arange(int(n.sum())) - torch.repeat_interleave(starts, n)  # slot within segment
        row = torch.repeat_interleave(torch.as_tensor(bin_of), n)
        col = torch.repeat_interleave(torch.as_tensor(offset), n) + k
        seg_end = torch.repeat_interleave(end, n)
        flat = seg_end - torch.repeat_interleave(n, n) + k  # flat index of each event
        shape = (max(bin_of) + 1, width)
        pos = torch.full(shape, pad, dtype=torch.long)
        pos[row, col] = flat
        segments = torch.zeros(shape, dtype=torch.long)
        segments[row, col] = torch.repeat_interleave(torch.arange(1, len(r) + 1), n)
        positions = torch.zeros(shape, dtype=torch.long)
        positions[row, col] = k
        qlast = torch.zeros(shape, dtype=torch.long)
        qlast[row, col] = torch.repeat_interleave(rows.qlast[r], n)
        last = torch.zeros(shape, dtype=torch.bool)  # each segment's last slot
        last[row, col] = flat + 1 == seg_end
        mask = segments > 0
        nxt = torch.where(mask, pos + 1, pad)
        return {
            "item_ids": _take(ev.items, pos),
            "mask": mask,
            "timestamps": _take(ev.ts, pos),
            "ratings": _take(ev.ratings, pos),
            "query_time": torch.where(last, qlast, _take(ev.ts, nxt)),
            "user_idx": rows.user[r],
            "segments": segments,
            "positions": positions,
            "targets": _take(ev.items, nxt),
            "loss_weight": (mask.sum() / (len(r) * self._mean_len)).float(),
        }


def _first_fit_decreasing(sizes: list[int], capacity: int) -> tuple[list[int], list[int]]:
    """Bin packing of ``sizes`` (each <= ``capacity``): ``(bin of each item, offset in it)``.

    Items go longest first into the first bin with room (at most 11/9 of the optimal bin count
    + 1); stable, so equal sizes keep their order.
    """
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    room: list[int] = []
    bin_of, offset = [0] * len(sizes), [0] * len(sizes)
    for i in order:
        size = sizes[i]
        b = next((j for j, free in enumerate(room) if free >= size), len(room))
        if b == len(room):
            room.append(capacity)
        bin_of[i], offset[i] = b, capacity - room[b]
        room[b] -= size
    return bin_of, offset
