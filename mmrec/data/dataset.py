"""Batches of AmazonDataModule from flat event tensors: padded and packed, no per-event Python."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmrec.data.batch import Batch, gather_events, left_padded, take


@dataclass
class _Events:
    """Every interaction as flat tensors, sorted by user then time (the parquet order).

    Index ``N`` is a sentinel padding event (each field's pad value) that padding slots read.
    """

    fields: dict[str, Tensor]  # per-event field (EVENT_FIELDS) -> [N+1], sentinel last
    ex_items: Tensor  # [X+1] int64: items of events that are the user's first with that item
    ex_cum: Tensor  # [N+1] int64: number of such events before each flat index

    @property
    def items(self) -> Tensor:
        """``[N+1]`` int64 item of each event (0: the sentinel)."""
        return self.fields["item_ids"]

    @property
    def ts(self) -> Tensor:
        """``[N+1]`` int64 unix time of each event (0: the sentinel)."""
        return self.fields["timestamps"]


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


def _identity(batch: Batch) -> Batch:
    """The collate function: a dataset item already is a whole batch."""
    return batch


def _gather_ragged(flat: Tensor, start: Tensor, cnt: Tensor) -> Tensor:
    """Rows ``flat[start_b : start_b + cnt_b]``, right-padded with 0: ``[B, max(1, max cnt)]``.

    ``flat`` ends with a 0 sentinel that padded slots point at.
    """
    width = max(int(cnt.max()) if cnt.numel() else 0, 1)
    ar = torch.arange(width)
    idx = torch.where(ar < cnt[:, None], start[:, None] + ar, flat.numel() - 1)  # [B, W]
    return take(flat, idx)


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
        last_only: Training rows only: the loss sees each row's last position alone (its
            ``targets`` are 0 elsewhere), for rows that are prefixes of a history.
    """

    def __init__(
        self,
        events: _Events,
        rows: _Rows,
        max_len: int,
        train: bool,
        exclude_history: bool = True,
        trim: bool = True,
        pack: bool = False,
        last_only: bool = False,
    ):
        self.ev, self.rows, self.max_len = events, rows, max_len
        self.train, self.exclude_history, self.trim = train, exclude_history, trim
        self.pack, self.last_only = pack, last_only
        self._mean_len = float(self.lengths().float().mean()) if len(self) else 1.0

    def __len__(self) -> int:
        return int(self.rows.user.numel())

    def lengths(self) -> Tensor:
        """Positions each row fills, ``min(history, max_len)``: ``[R]`` (for length bucketing)."""
        return (self.rows.end - self.rows.begin).clamp(max=self.max_len)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int] | Tensor) -> Batch:
        r = torch.as_tensor(indices, dtype=torch.long)
        if self.pack and self.train and len(r):
            return self._packed(r)
        ev, rows = self.ev, self.rows
        begin, end = rows.begin[r], rows.end[r]  # [B]
        width = self.max_len
        if self.trim and len(r):
            width = max(1, min(self.max_len, int((end - begin).max())))
        batch, nxt = left_padded(ev.fields, begin, end, rows.qlast[r], width)  # [B, L] each
        batch["user_idx"] = rows.user[r]
        if self.train:
            batch["targets"] = take(ev.items, nxt)
            if self.last_only:  # rows end at the last column (left-padded)
                batch["targets"][:, :-1] = 0
            batch["loss_weight"] = self._loss_weight(batch["mask"], len(r))
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

    def _loss_weight(self, mask: Tensor, rows: int) -> Tensor:
        """Real slots of this batch / slots of an average batch of ``rows`` rows: ``[]``.

        The module scales the batch-mean loss by it, so every training position weighs the
        same however batches are grouped (length-bucketed batches differ 10x in slots). With
        ``last_only`` every row has one loss term, so every batch weighs 1.
        """
        if self.last_only:
            return torch.ones(())
        return (mask.sum() / (rows * self._mean_len)).float()

    def _packed(self, r: Tensor) -> Batch:
        """Training batch of rows ``r`` packed into shared rows (first-fit decreasing)."""
        ev, rows, pad = self.ev, self.rows, self.ev.items.numel() - 1
        end = rows.end[r]
        n = (end - rows.begin[r]).clamp(max=self.max_len)  # [B] slots per user (>= 1)
        bin_of, offset = _first_fit_decreasing(n.tolist(), self.max_len)
        fill = int((torch.as_tensor(offset) + n).max())  # the fullest row
        shape = (max(bin_of) + 1, fill if self.trim else self.max_len)  # [R, L]
        starts = torch.cumsum(n, 0) - n
        k = torch.arange(int(n.sum())) - torch.repeat_interleave(starts, n)  # slot within segment
        row = torch.repeat_interleave(torch.as_tensor(bin_of), n)
        col = torch.repeat_interleave(torch.as_tensor(offset), n) + k
        seg_end = torch.repeat_interleave(end, n)
        flat = seg_end - torch.repeat_interleave(n, n) + k  # flat index of each event

        def scatter(values: Tensor, fill_value: int, dtype=torch.long) -> Tensor:  # -> [R, L]
            out = torch.full(shape, fill_value, dtype=dtype)
            out[row, col] = values
            return out

        pos = scatter(flat, pad)
        segments = scatter(torch.repeat_interleave(torch.arange(1, len(r) + 1), n), 0)
        qlast = scatter(torch.repeat_interleave(rows.qlast[r], n), 0)
        last = scatter(flat + 1 == seg_end, False, torch.bool)  # each segment's last slot
        mask = segments > 0
        nxt = torch.where(mask, pos + 1, pad)
        targets = take(ev.items, nxt)
        if self.last_only:
            targets = torch.where(last, targets, 0)
        batch: Batch = gather_events(ev.fields, pos)  # type: ignore[assignment]
        batch |= {
            "mask": mask,
            "query_time": torch.where(last, qlast, take(ev.ts, nxt)),
            "user_idx": rows.user[r],
            "segments": segments,
            "positions": scatter(k, 0),
            "targets": targets,
            "loss_weight": self._loss_weight(mask, len(r)),
        }
        return batch


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
