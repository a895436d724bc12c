"""Exact ranks by counting, for one chunk of score rows: item ids checked and deduplicated, and
the rank of every target under the tie rule of :mod:`mmrec.evaluation.ranking` (a relevant
item after the non-relevant ones it ties with), by item chunks or by sort + binary search."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_NAN = float("nan")


def _as_ids(
    x: Tensor | Sequence[Sequence[int]] | None, device: torch.device, name: str
) -> Tensor | None:
    """Lists of item-id lists or a 0-padded tensor -> ``[U, T]`` int64 on ``device``."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        t = x.to(device=device, dtype=torch.long)
        if t.ndim == 1:
            t = t.unsqueeze(1)
    else:
        rows = [list(r) for r in x]
        width = max([len(r) for r in rows] + [1])
        t = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        t = t.to(device)
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be [U, T] (0-padded) or a list of id lists, got shape {tuple(t.shape)}"
        )
    return t


def _dedupe(targets: Tensor) -> Tensor:
    """``[u, T]``: later repeats of an id in a row set to 0 (padding)."""
    t = targets.shape[1]
    if t < 2:
        return targets
    same = targets.unsqueeze(2) == targets.unsqueeze(1)  # [u, T, T]
    earlier = torch.ones(t, t, dtype=torch.bool, device=targets.device).tril(-1)  # [j, k]: k < j
    repeat = (same & earlier).any(2)
    return targets.masked_fill(repeat, 0)


def _count_ge(cands: Tensor, ts: Tensor, item_chunk: int, use_sort: bool) -> Tensor:
    """``#{c: cands[u, c] >= ts[u, j]}`` ignoring NaN candidates -> ``[u, T]`` int64 (may
    overwrite ``cands``)."""
    if use_sort:
        nan = torch.isnan(cands)
        n_nan = nan.sum(1, keepdim=True)
        # binary search needs a NaN-free row: masked entries become -inf and are taken back
        # out of the count for targets scored -inf themselves
        ordered = cands.masked_fill(nan, float("-inf")).sort(dim=1).values
        below = torch.searchsorted(ordered, ts.contiguous(), side="left")
        return cands.shape[1] - below - n_nan * (ts == float("-inf"))
    if ts.shape[1] == 1 and cands.dtype in (torch.float32, torch.float64):
        # one target per row (leave-one-out): compare in place, ~3x faster than a bool block;
        # its 0/1 floats sum exactly below 2**24 candidates; NaN >= x is False, as below
        return cands.ge_(ts).sum(1, keepdim=True).long()
    out = torch.zeros(ts.shape, dtype=torch.long, device=ts.device)
    tq = ts.unsqueeze(2)  # [u, T, 1]
    for lo in range(0, cands.shape[1], item_chunk):
        out += (cands[:, None, lo : lo + item_chunk] >= tq).sum(2, dtype=torch.int32)
    return out


def _rank_rows(
    scores: Tensor,
    targets: Tensor,
    exclude: Tensor | None,
    memory_budget_mb: float,
    sort_threshold: int,
) -> Tensor:
    """Ranks for one chunk. ``scores [u, C]`` is owned (overwritten); column 0 is never valid."""
    # one cheap reduction first (NaN propagates); the exact check only when it is not finite
    if not bool(torch.isfinite(scores.sum())) and bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN: check the model (or the score matrix) for overflow")
    targets = _dedupe(targets)
    pad = targets == 0  # [u, T]
    ts = scores.gather(1, targets)  # [u, T] from the same computed rows
    scores[:, 0] = _NAN
    if exclude is not None:
        scores.scatter_(1, exclude, _NAN)
    scores.scatter_(1, targets, _NAN)  # targets leave the non-relevant pool (never "excluded")
    u, t = targets.shape
    item_chunk = max(1, int(memory_budget_mb * 2**20) // (2 * max(1, u * t)))
    ge = _count_ge(scores, ts, item_chunk, use_sort=t > sort_threshold)
    # relevant items ahead of j: higher score, or equal score and earlier in the row
    sk, sj = ts.unsqueeze(1), ts.unsqueeze(2)  # [u, 1, T] (k), [u, T, 1] (j)
    earlier = torch.ones(t, t, dtype=torch.bool, device=ts.device).tril(-1)  # [j, k]: k < j
    ahead = ((sk > sj) | ((sk == sj) & earlier)) & ~pad.unsqueeze(1)
    ranks = (1 + ge + ahead.sum(2)).float()
    return ranks.masked_fill(pad, float("inf"))


def _check_ids(ids: Tensor | None, num_cols: int, name: str) -> None:
    if ids is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_cols):
        raise ValueError(
            f"{name} must hold item ids in 0..{num_cols - 1} (0 = padding), "
            f"got {int(ids.min())}..{int(ids.max())}"
        )
