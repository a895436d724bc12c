"""Samplers of AmazonDataModule: length-bucketed training shards, unpadded evaluation shards."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DistributedSampler


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
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
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
        self,
        dataset: Any,
        batch_size: int,
        window: int = 50,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ):
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size} and {window}")
        world, me = _dist_world()
        super().__init__(
            dataset,
            num_replicas=world if num_replicas is None else num_replicas,
            rank=me if rank is None else rank,
            shuffle=True,
            seed=seed,
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
