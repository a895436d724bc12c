"""Non-neural baselines (popularity, last-item co-occurrence) scored by the model's evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.evaluation.beyond import BeyondAccuracy, topk_from_scores
from mmrec.evaluation.metrics import RankingMetrics, check_ks, per_user_table
from mmrec.evaluation.ranking import rank_from_scores

if TYPE_CHECKING:
    from typing import Self

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
    begin, end = ds.rows.begin, ds.rows.end  # [R]
    n = end - begin  # [R] transitions per user
    pos = torch.repeat_interleave(begin - torch.cumsum(n, 0) + n, n) + torch.arange(int(n.sum()))
    return items[pos].numpy(), items[pos + 1].numpy()


class Baseline(ABC):
    """A recommender without training steps: ``fit`` on the training split, then score batches.

    Subclasses score the whole catalogue for a batch of the datamodule's evaluation loaders, so
    :func:`evaluate_baseline` ranks them exactly like the model (``rank_from_scores``).
    """

    @abstractmethod
    def fit(self, dm: AmazonDataModule) -> Self:
        """Estimate from the training split of ``dm`` only; returns ``self``."""

    @abstractmethod
    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N + 1]`` float32 scores of every item for the batch's users (column 0 = ``-inf``,
        the padding item)."""

    def _check_fitted(self, attr: object) -> None:
        if attr is None:
            raise RuntimeError(f"{type(self).__name__}.fit(dm) must be called before scores()")


class PopularityBaseline(Baseline):
    """Score of an item = its number of training events, the same for every user.

    Items with equal counts tie; the ranking places a relevant item after the non-relevant ones
    it ties with (see :mod:`mmrec.evaluation.ranking`), so ties count against the baseline.
    """

    def __init__(self) -> None:
        self.item_scores: Tensor | None = None  # [N + 1]

    def fit(self, dm: AmazonDataModule) -> Self:
        """Reads ``dm.item_train_counts`` (training split only)."""
        s = dm.item_train_counts.to(torch.float32).clone()  # [N + 1]
        s[0] = float("-inf")
        self.item_scores = s
        return self

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N + 1]``: the training counts in every row (column 0 = ``-inf``)."""
        self._check_fitted(self.item_scores)
        return self.item_scores.expand(batch["item_ids"].shape[0], -1).clone()


class LastItemCoOccurrence(Baseline):
    """Score of item ``j`` = how often ``j`` directly followed the user's last history item in
    the training sequences, plus ``popularity_weight * count_j / max_count`` as a tie-breaker.

    The transition counts ``C[i, j]`` (``j`` right after ``i`` in one user's training events)
    are a sparse ``[N + 1, N + 1]`` CSR matrix; a batch gathers the rows of its users' last
    items only. With ``popularity_weight < 1`` one more co-occurrence always outweighs
    popularity, so popularity only orders items of equal count: exactly among the items that
    never followed the last item (score = the popularity term alone); among items with count
    ``c > 0`` scores are ranked in float32, so popularity differences smaller than about
    ``c * 1.2e-7 / popularity_weight`` of the top count are lost to rounding.

    Args:
        popularity_weight: Weight of the normalised training popularity (in [0, 1]) added to
            the co-occurrence count; 0 leaves ties among equal counts.
    """

    def __init__(self, popularity_weight: float = 1e-3) -> None:
        if not 0 <= popularity_weight < 1:
            raise ValueError(f"popularity_weight must be in [0, 1), got {popularity_weight}")
        self.popularity_weight = popularity_weight
        self.transitions: sp.csr_matrix | None = None  # [N + 1, N + 1]
        self.prior: Tensor | None = None  # [N + 1]

    def fit(self, dm: AmazonDataModule) -> Self:
        """Counts the transitions of the training split (:func:`training_transitions`)."""
        n = dm.num_items + 1
        prev, nxt = training_transitions(dm)
        ones = np.ones(prev.shape[0], dtype=np.float32)
        self.transitions = sp.csr_matrix((ones, (prev, nxt)), shape=(n, n))  # sums repeats
        self.transitions.sum_duplicates()
        counts = dm.item_train_counts.to(torch.float32)  # [N + 1]
        prior = self.popularity_weight * counts / max(float(counts.max()), 1.0)
        prior[0] = float("-inf")
        self.prior = prior
        return self

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N + 1]`` scores from the last real item of each row's history (left-padded
        ``item_ids``; a row without history gets the popularity term only)."""
        self._check_fitted(self.transitions)
        last = torch.where(batch["mask"][:, -1], batch["item_ids"][:, -1], 0)  # [B]
        rows = self.transitions[last.cpu().numpy()].toarray()  # [B, N + 1]
        return torch.from_numpy(rows) + self.prior


@dataclass(frozen=True)
class BaselineEvaluation:
    """What :func:`evaluate_baseline` returns.

    Attributes:
        metrics: ``{prefix + name: mean over users}``, the keys of ``RankingMetrics`` (and of
            ``BeyondAccuracy`` when asked for).
        per_user: One row per evaluated user, sorted by ``user_idx``, in the format of the
            model's ``test_per_user.parquet`` (:func:`~mmrec.evaluation.metrics.per_user_table`):
            ``user_idx``, ``user_id``, ``num_targets``, ``first_rank`` and one float64 column
            per name of ``metric_names(ks)`` (no prefix); the column means equal ``metrics``
            (to 1e-9).
    """

    metrics: dict[str, float]
    per_user: pl.DataFrame


@torch.no_grad()
def evaluate_baseline(
    baseline: Baseline,
    dm: AmazonDataModule,
    split: str = "test",
    ks: Sequence[int] = (10, 20),
    *,
    prefix: str = "",
    exclude_history: bool = True,
    beyond: bool = False,
) -> BaselineEvaluation:
    """Full-catalogue ranking metrics of a fitted baseline on a split, as the model computes them.

    Every batch of the split's loader is scored (``baseline.scores``), ranked with
    :func:`~mmrec.evaluation.ranking.rank_from_scores` (history excluded as the model does) and
    fed to :class:`~mmrec.evaluation.metrics.RankingMetrics`.

    Args:
        baseline: A fitted baseline.
        dm: The datamodule (its ``exclude_history`` decides what ``exclude_items`` holds).
        split: ``"valid"`` or ``"test"``.
        ks: Cut-offs K.
        prefix: Put in front of every metric key, e.g. ``"test/"``.
        exclude_history: Drop the history items from the candidates (the model's
            ``exclude_history``).
        beyond: Also compute :class:`~mmrec.evaluation.beyond.BeyondAccuracy` (coverage,
            popularity percentile, novelty) of the top-``max(ks)`` lists.

    Returns:
        The :class:`BaselineEvaluation` (mean metrics and per-user values).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    ks = check_ks(ks)
    loader = {"valid": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    metrics = RankingMetrics(ks=ks, prefix=prefix)
    extra = None
    if beyond:
        extra = BeyondAccuracy(ks=ks, prefix=prefix)
        extra.set_item_train_counts(dm.item_train_counts)
    users, ranks = [], []  # per batch: [B], [B, T]
    for batch in loader:
        scores = baseline.scores(batch)  # [B, N + 1]
        exclude = batch["exclude_items"] if exclude_history else None
        r = rank_from_scores(scores, batch["target_items"], exclude)  # [B, T]
        metrics.update(r)
        users.append(batch["user_idx"])
        ranks.append(r)
        if extra is not None:
            extra.update(topk_from_scores(scores, max(ks), exclude))
    out = {k: float(v) for k, v in metrics.compute().items()}
    if extra is not None:
        out |= {k: float(v) for k, v in extra.compute().items()}
    width = max([r.shape[1] for r in ranks] + [1])
    all_ranks = torch.cat(
        [F.pad(r, (0, width - r.shape[1]), value=float("inf")) for r in ranks]
        or [torch.zeros(0, 1)]
    )  # [U, T]
    all_users = torch.cat(users or [torch.zeros(0, dtype=torch.long)])  # [U]
    per_user = per_user_table(all_users, all_ranks, ks, dm.data_dir)
    return BaselineEvaluation(metrics=out, per_user=per_user)
