"""Ranking metrics (HR/Recall/Precision/F1/NDCG/MRR/MAP) from target ranks, as torchmetrics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

PER_K = ("hr", "recall", "precision", "f1", "ndcg", "mrr", "map")
"""Metric names computed at every cut-off K (keys ``"{name}@{K}"``); ``"mrr"`` has no cut-off."""

FIXED_POINT_SCALE = 2**32
"""Per-user values (all in ``[0, 1]``) are summed as ``round(value * 2**32)`` in int64.

Integer sums are associative, so the result does not depend on batch sizes, on the number of
processes or on the order in which they are reduced: DDP gives the single-process value
bit for bit. Resolution 2.3e-10 per user; overflow only beyond 2**31 users.
"""


def metric_names(ks: Sequence[int]) -> list[str]:
    """Keys :func:`per_user_metrics` fills, in column order: ``mrr``, then each metric at each K."""
    return ["mrr"] + [f"{name}@{k}" for k in ks for name in PER_K]


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate cut-offs: positive ints, returned sorted and de-duplicated."""
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1 or any(int(k) != k for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    return out


@torch.no_grad()
def per_user_metrics(
    ranks: Tensor, num_relevant: Tensor | None, ks: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Every metric for every user from the ranks of the user's relevant items.

    Definitions (candidates ranked by score, descending; among equal scores a relevant item is
    placed after the non-relevant ones, so ties count against the model; ``rank`` = 1-based
    position in that order; ``rel`` = the user's relevant items, ``hits`` = relevant items with
    rank <= K):

    - ``hr@K`` = 1 if hits > 0 else 0
    - ``recall@K`` = hits / |rel|
    - ``precision@K`` = hits / K
    - ``f1@K`` = 2PR / (P + R) of this user's precision and recall (0 when both are 0), i.e.
      ``2 hits / (K + |rel|)``; averaged over users like every other metric
    - ``ndcg@K`` = DCG / IDCG, gain ``1 / log2(rank + 1)`` per hit, IDCG over the best
      ``min(|rel|, K)`` positions
    - ``mrr`` = 1 / rank of the first relevant item; ``mrr@K`` = the same, 0 when that rank > K
    - ``map@K`` = sum over hits of (precision at the hit's rank), divided by ``min(|rel|, K)``

    Args:
        ranks: ``[U, T]`` rank of each relevant item, ``inf`` for padding (any order).
        num_relevant: ``[U]`` |rel| per user (may exceed the finite ranks, e.g. relevant items
            that could not be ranked), or None to count the finite ranks.
        ks: Cut-offs.

    Returns:
        ``values [U, M]`` float64 in the column order of :func:`metric_names`, and
        ``keep [U]`` bool: users with |rel| > 0 (the others have all-zero rows and must be skipped).
    """
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be [U, T], got shape {tuple(ranks.shape)}")
    r = ranks.double().sort(dim=1).values  # [U, T], inf last
    finite = torch.isfinite(r)
    n_finite = finite.sum(1)
    if num_relevant is None:
        n = n_finite
    else:
        n = torch.as_tensor(num_relevant, device=r.device).long().reshape(-1)
        if n.shape[0] != r.shape[0]:
            raise ValueError(f"num_relevant has {n.shape[0]} users, ranks has {r.shape[0]}")
        if bool((n < n_finite).any()):
            raise ValueError(
                "num_relevant is smaller than the number of ranked relevant items for some user; "
                "pass num_relevant=None to count the finite ranks"
            )
    if bool((r[finite] < 1).any()):
        raise ValueError("ranks must be >= 1 (1 = top of the list)")
    keep = n > 0
    nd = n.double().clamp(min=1.0)  # [U]
    pos = torch.arange(1, r.shape[1] + 1, device=r.device, dtype=torch.float64)  # [T]
    gain = torch.where(finite, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))  # [U, T]
    prec_at_hit = torch.where(finite, pos / r, torch.zeros_like(r))  # [U, T]
    first = r[:, 0] if r.shape[1] else torch.full_like(nd, math.inf)
    mrr = torch.where(torch.isfinite(first), 1.0 / first, torch.zeros_like(first))
    cols = [mrr]
    kmax = max(ks)
    ideal = torch.cumsum(
        1.0 / torch.log2(torch.arange(2, kmax + 2, device=r.device, dtype=torch.float64)), 0
    )
    for k in ks:
        within = r <= k  # [U, T]
        hits = within.sum(1).double()
        m = torch.minimum(nd, torch.tensor(float(k), dtype=torch.float64, device=r.device))
        idcg = ideal[(m.long() - 1).clamp(min=0)]
        cols += [
            (hits > 0).double(),  # hr
            hits / nd,  # recall
            hits / k,  # precision
            2.0 * hits / (k + nd),  # f1
            (gain * within).sum(1) / idcg,  # ndcg
            torch.where(first <= k, mrr, torch.zeros_like(mrr)),  # mrr@k
            (prec_at_hit * within).sum(1) / m,  # map
        ]
    values = torch.stack(cols, 1) * keep.unsqueeze(1)
    return values, keep


def per_user_table(users: Tensor, ranks: Tensor, ks: Sequence[int], data_dir: str | None = None):
    """Per-user metrics as a polars DataFrame, sorted by ``user_idx``.

    Columns: ``user_idx``, ``user_id`` (from ``data_dir/users.parquet`` when given),
    ``num_targets``, ``first_rank`` (rank of the best-ranked target) and one float64 column
    per name of :func:`metric_names` (the values averaged in the metric tables). Users without
    a relevant item are left out, as :class:`RankingMetrics` skips them.

    Args:
        users: ``[U]`` user_idx.
        ranks: ``[U, T]`` ranks of each user's targets (``inf`` = padding).
        ks: Cut-offs.
        data_dir: Dataset folder to read user ids from, or None.
    """
    from pathlib import Path

    import polars as pl

    values, keep = per_user_metrics(ranks, None, ks)
    finite = torch.isfinite(ranks)
    first = torch.where(finite, ranks, torch.full_like(ranks, math.inf)).min(1).values
    frame = pl.DataFrame(
        {
            "user_idx": users[keep].numpy().astype("int32"),
            "num_targets": finite.sum(1)[keep].numpy().astype("int32"),
            "first_rank": first[keep].numpy().astype("int64"),
            **{name: values[keep, j].numpy() for j, name in enumerate(metric_names(check_ks(ks)))},
        }
    ).sort("user_idx")
    users_file = Path(data_dir) / "users.parquet" if data_dir else None
    if users_file is not None and users_file.is_file():
        ids = pl.read_parquet(users_file, columns=["user_idx", "user_id"])
        frame = frame.join(ids.cast({"user_idx": pl.Int32}), on="user_idx", how="left")
        frame = frame.select("user_idx", "user_id", *[c for c in frame.columns[1:-1]])
    return frame


def to_fixed_point(values: Tensor) -> Tensor:
    """``[..., M]`` float values in [0, 1] -> int64 fixed point (see :data:`FIXED_POINT_SCALE`)."""
    return torch.round(values.double() * FIXED_POINT_SCALE).long()


class RankingMetrics(Metric):
    """HR, Recall, Precision, F1, NDCG, MRR@K, MAP@K at each K, and MRR, averaged over users.

    Fed with ranks (see :func:`mmrec.evaluation.rank_targets`); definitions in
    :func:`per_user_metrics`. States are sums of per-user values (int64 fixed point, see
    :data:`FIXED_POINT_SCALE`) and a user count, all reduced with ``sum`` across processes, so
    under DDP every user counts exactly once provided the sampler gives each user to one
    process (no padding duplicates). Users with no relevant item are skipped and counted in the
    ``skipped`` state (a warning reports them at ``compute``).

    Args:
        ks: Cut-offs K.
        prefix: Put in front of every key, e.g. ``"val/"``.
        sampled: The ranks come from sampled candidates, not the whole catalogue: every key
            then reads ``sampled_<metric>`` so such numbers cannot pass for full-ranking ones.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self, ks: Sequence[int] = (10, 20), prefix: str = "", sampled: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.ks = check_ks(ks)
        self.prefix = prefix
        self.sampled = sampled
        self.names = metric_names(self.ks)
        self.add_state(
            "sums", torch.zeros(len(self.names), dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state("users", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def keys(self) -> list[str]:
        """The keys :meth:`compute` returns."""
        tag = "sampled_" if self.sampled else ""
        return [f"{self.prefix}{tag}{name}" for name in self.names]

    def update(self, ranks: Tensor, num_relevant: Tensor | None = None) -> None:
        """Add a batch of users.

        Args:
            ranks: ``[U, T]`` ranks of each user's relevant items (``inf`` = padding).
            num_relevant: ``[U]`` number of relevant items per user, or None to count the
                finite ranks (recommended: duplicates in ``target_items`` get ``inf`` ranks).
        """
        values, keep = per_user_metrics(ranks, num_relevant, self.ks)
        self.sums += to_fixed_point(values).sum(0).to(self.sums.device)
        kept = int(keep.sum())
        self.users += kept
        self.skipped += keep.numel() - kept

    def compute(self) -> dict[str, Tensor]:
        """``{key: mean over users}`` as float64 scalars (NaN before any user was seen)."""
        if int(self.skipped):
            rank_zero_warn(
                f"{self.prefix}RankingMetrics skipped {int(self.skipped)} users "
                "without relevant items"
            )
        users = int(self.users)
        if users == 0:
            rank_zero_warn(f"{self.prefix}RankingMetrics.compute() saw no users; values are NaN")
        means = self.sums.double() / FIXED_POINT_SCALE / max(users, 1)
        if users == 0:
            means = torch.full_like(means, math.nan)
        return dict(zip(self.keys(), means.unbind(0), strict=True))
