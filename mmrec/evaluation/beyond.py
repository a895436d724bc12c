"""Beyond-accuracy metrics of top-K lists (catalogue coverage, popularity percentile, novelty)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from mmrec.evaluation.metrics import check_ks


def popularity_percentile(item_train_counts: Tensor) -> Tensor:
    """``[N + 1]`` float64 percentile of each item's training count among the N items, in [0, 1].

    ``(mid-rank - 1) / (N - 1)`` with mid-ranks for ties (ascending: the least popular item
    gets 0, the most popular 1; items with equal counts share the mean of their ranks, so a
    catalogue of equal counts is all 0.5, as is a catalogue of one item). Equivalently
    ``(#{smaller counts} + (#{equal counts} - 1) / 2) / (N - 1)``. Entry 0 (padding) is 0.
    """
    c = torch.as_tensor(item_train_counts).reshape(-1)[1:].double()  # [N]
    n = c.numel()
    out = torch.zeros(n + 1, dtype=torch.float64)
    if n == 0:
        return out
    ordered = c.sort().values
    less = torch.searchsorted(ordered, c, side="left").double()
    equal = torch.searchsorted(ordered, c, side="right").double() - less
    out[1:] = (less + (equal - 1) / 2) / (n - 1) if n > 1 else 0.5
    return out


def self_information(item_train_counts: Tensor) -> Tensor:
    """``[N + 1]`` float64 novelty ``-log2 p(i)`` of each item, ``p(i) = (c_i + 1) / (C + N)``.

    ``c_i`` = training events of item ``i``, ``C`` = all training events, ``N`` items:
    add-one (Laplace) smoothing, so an item never seen in training has a finite novelty
    ``log2(C + N)`` and the ``p(i)`` sum to 1 over the N items. Entry 0 (padding) is 0.
    """
    c = torch.as_tensor(item_train_counts).reshape(-1).double()  # [N + 1]
    n = c.numel() - 1
    p = (c[1:] + 1) / (c[1:].sum() + n)
    return torch.cat([torch.zeros(1, dtype=torch.float64), -torch.log2(p)])


@torch.no_grad()
def topk_from_scores(scores: Tensor, k: int, exclude_items: Tensor | None = None) -> Tensor:
    """Top-``k`` items of each row of a score matrix (the lists :class:`BeyondAccuracy` takes).

    Args:
        scores: ``[B, N + 1]`` scores, column 0 = padding (never returned).
        k: List length, at most N.
        exclude_items: ``[B, E]`` 0-padded item ids never to return (the history), or None.

    Returns:
        ``[B, k]`` int64 item ids, best first (ties in ``torch.topk`` order); 0 where fewer than
        ``k`` items remain after exclusion.
    """
    if not 1 <= k <= scores.shape[1] - 1:
        raise ValueError(f"k must be in 1..{scores.shape[1] - 1} (the number of items), got {k}")
    bad = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)  # [B, N + 1]
    bad[:, 0] = True
    if exclude_items is not None:
        bad.scatter_(1, exclude_items.to(scores.device).long(), True)
    s = scores.float().masked_fill(bad, float("-inf"))
    top = s.topk(k, dim=1).indices  # [B, k]
    return top.masked_fill(bad.gather(1, top), 0)


class BeyondAccuracy(Metric):
    """Catalogue coverage, popularity percentile and novelty of top-K lists, at each K.

    For every K, over all users' top-K lists (slots holding item 0 are skipped):

    - ``coverage@K``: share of the N items recommended to at least one user;
    - ``pop_percentile@K``: mean over recommended slots of the item's training-count percentile
      among the N items (:func:`popularity_percentile`: 0 = least popular, 1 = most popular,
      ties at mid-rank);
    - ``novelty@K``: mean over recommended slots of ``-log2 p(item)`` with the add-one smoothed
      training popularity ``p(i) = (c_i + 1) / (C + N)`` (:func:`self_information`).

    The only state is ``counts [len(ks), N + 1]`` int64: how often each item was recommended
    within the first K slots. Integer sums reduced with ``sum`` across processes make the
    results independent of batch sizes and, under DDP, equal to one process (provided each user
    is evaluated by one process); ``compute`` turns them into the means in float64.

    Args:
        ks: Cut-offs K; ``update`` needs lists of at least ``max(ks)`` items.
        prefix: Put in front of every key, e.g. ``"test/"``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None  # coverage and novelty up, popularity percentile down: no one way

    def __init__(self, ks: Sequence[int] = (10, 20), prefix: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks, self.prefix = check_ks(ks), prefix
        self.register_buffer("percentile", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.register_buffer("novelty", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.add_state(
            "counts", torch.zeros(len(self.ks), 0, dtype=torch.int64), dist_reduce_fx="sum"
        )

    @property
    def num_items(self) -> int:
        """N, known once :meth:`set_item_train_counts` was called (0 before)."""
        return max(self.percentile.numel() - 1, 0)

    @property
    def ready(self) -> bool:
        """Whether the item counts are set (``update`` needs them)."""
        return self.num_items > 0

    def keys(self) -> list[str]:
        """The keys :meth:`compute` returns."""
        names = ("coverage", "pop_percentile", "novelty")
        return [f"{self.prefix}{name}@{k}" for k in self.ks for name in names]

    def set_item_train_counts(self, item_train_counts: Tensor) -> None:
        """Set the ``[N + 1]`` training events per item (index 0 = padding); sizes the state
        for N items and clears what was accumulated."""
        counts = torch.as_tensor(item_train_counts).reshape(-1)
        if counts.numel() < 2 or bool((counts < 0).any()):
            raise ValueError(
                f"item_train_counts must be [N + 1] non-negative counts with N >= 1, "
                f"got shape {tuple(counts.shape)}"
            )
        dev = self.counts.device
        self.percentile = popularity_percentile(counts).to(dev)
        self.novelty = self_information(counts).to(dev)
        self.add_state(
            "counts",
            torch.zeros(len(self.ks), counts.numel(), dtype=torch.int64, device=dev),
            dist_reduce_fx="sum",
        )
        self.reset()

    def update(self, top_items: Tensor) -> None:
        """Add a batch of top-K lists.

        Args:
            top_items: ``[B, K]`` item ids, best first, ``K >= max(ks)``; 0 = no item (skipped).
        """
        if self.num_items == 0:
            raise RuntimeError("call BeyondAccuracy.set_item_train_counts(counts) before update")
        if top_items.ndim != 2 or top_items.shape[1] < self.ks[-1]:
            raise ValueError(
                f"top_items must be [B, K] with K >= max(ks) = {self.ks[-1]}, "
                f"got shape {tuple(top_items.shape)}"
            )
        items = top_items.to(self.counts.device).long()
        if items.numel() and (int(items.min()) < 0 or int(items.max()) > self.num_items):
            raise ValueError(
                f"top_items must hold item ids in 0..{self.num_items} (0 = no item), "
                f"got {int(items.min())}..{int(items.max())}"
            )
        for i, k in enumerate(self.ks):
            self.counts[i] += torch.bincount(items[:, :k].reshape(-1), minlength=self.num_items + 1)

    def compute(self) -> dict[str, Tensor]:
        """``{prefix + "coverage@K", prefix + "pop_percentile@K", prefix + "novelty@K"}`` float64
        scalars; the means are NaN (coverage 0) when no item was recommended."""
        out: dict[str, Tensor] = {}
        if self.num_items == 0:
            raise RuntimeError("call BeyondAccuracy.set_item_train_counts(counts) before compute")
        for i, k in enumerate(self.ks):
            c = self.counts[i, 1:]  # [N] item 0 never counts
            slots = int(c.sum())
            if slots == 0:
                rank_zero_warn(f"{self.prefix}BeyondAccuracy@{k} saw no recommended item")
            cd = c.double()
            denom = slots if slots else math.nan
            out[f"{self.prefix}coverage@{k}"] = (c > 0).sum().double() / self.num_items
            out[f"{self.prefix}pop_percentile@{k}"] = (cd * self.percentile[1:]).sum() / denom
            out[f"{self.prefix}novelty@{k}"] = (cd * self.novelty[1:]).sum() / denom
        return out
