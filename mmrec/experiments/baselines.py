"""Non-neural baselines (popularity, co-occurrence, causal recency counts, blends) scored by the
model's evaluation."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.calendar import DAY
from mmrec.config import Configurable, instantiate
from mmrec.data.batch import last_items
from mmrec.data.eventlog import EventLog
from mmrec.evaluation.beyond import BeyondAccuracy, topk_from_scores
from mmrec.evaluation.metrics import RankingMetrics, check_ks, per_user_table
from mmrec.evaluation.ranking import rank_from_scores
from mmrec.experiments.counts import (
    DecayedCounts,
    event_log,
    event_transitions,
    per_time,
    spans,
    training_transitions,
)

if TYPE_CHECKING:
    from typing import Self

    from mmrec.data.datamodule import AmazonDataModule


def _padding_out(scores: Tensor) -> Tensor:
    """``scores [B, N + 1]`` with column 0 (the padding item) set to ``-inf``, in place."""
    scores[:, 0] = float("-inf")
    return scores


class Baseline(Configurable, ABC):
    """A recommender without training steps: ``fit`` on the datamodule, then score batches.

    Subclasses score the whole catalogue for a batch of the datamodule's evaluation loaders, so
    :func:`evaluate_baseline` ranks them exactly like the model (``rank_from_scores``). A
    baseline reads either the training split only, or the whole event log cut at each row's
    query time (``target_time``: events strictly before it). Constructor arguments are
    recorded (:class:`~mmrec.config.Configurable`), so an experiment names a baseline by
    ``class_path`` and ``init_args``.
    """

    @abstractmethod
    def fit(self, dm: AmazonDataModule) -> Self:
        """Estimate from ``dm`` (the training split, or the event log that each row's query
        time cuts); returns ``self``."""

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
        last = last_items(batch)  # [B]
        rows = self.transitions[last.cpu().numpy()].toarray()  # [B, N + 1]
        return torch.from_numpy(rows) + self.prior


class RecentCountBaseline(Baseline):
    """Score of an item = its events in the ``window_days`` before the row's query time:
    ``[t - w, t)``, ``t`` = ``target_time``, from the whole event log (every user, every
    split), so nothing at or after ``t`` is counted.

    Items with equal counts tie (the ranking counts ties against the baseline); most of the
    catalogue has no event in a short window.

    Args:
        window_days: Window length ``w`` in days (> 0; fractions allowed).
    """

    def __init__(self, window_days: float = 3.0) -> None:
        if not window_days > 0:
            raise ValueError(f"window_days must be > 0, got {window_days}")
        self.window_days = float(window_days)
        self.log: EventLog | None = None

    def fit(self, dm: AmazonDataModule) -> Self:
        """Reads every event of ``dm``'s folder (:func:`event_log`)."""
        self.log = event_log(dm)
        return self

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N + 1]``: each item's events in ``[t - w, t)`` of the row's ``target_time``."""
        self._check_fitted(self.log)
        window = [self.window_days * DAY]
        counts = per_time(lambda t: self.log.window_counts(t, window)[:, 0], batch["target_time"])
        return _padding_out(counts.to(torch.float32))  # [B, N + 1]


class DecayedCountBaseline(Baseline):
    """Score of an item = its exponentially time-decayed number of events before the row's
    query time ``t``: each event at ``time < t`` weighs ``0.5 ** ((t - time) / half_life)``
    (:class:`DecayedCounts`; every user, every split).

    Args:
        half_life_days: Age in days at which an event counts one half (> 0).
    """

    def __init__(self, half_life_days: float = 7.0) -> None:
        if not half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
        self.half_life_days = float(half_life_days)
        self.counts: DecayedCounts | None = None

    def fit(self, dm: AmazonDataModule) -> Self:
        """Reads every event of ``dm``'s folder and builds the decayed snapshots."""
        self.counts = DecayedCounts(event_log(dm), self.half_life_days * DAY)
        return self

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N + 1]``: decayed counts as of each row's ``target_time``."""
        self._check_fitted(self.counts)
        counts = per_time(self.counts.before, batch["target_time"])  # [B, N + 1]
        return _padding_out(counts.to(torch.float32))


class CausalCoOccurrence(Baseline):
    """Score of item ``j`` for a row whose last history item is ``i`` = the number of
    transitions ``i -> j`` (consecutive events of one user, any split) whose ``j`` event
    happened strictly before the row's query time ``t``, optionally time-decayed, plus
    ``popularity_weight * count_j(t) / max count(t)`` with ``count(t)`` = the events before
    ``t`` (causal too) as a tie-breaker.

    Unlike :class:`LastItemCoOccurrence` (training transitions only), what followed what up to
    the query time counts, validation and earlier test events of other users included. The
    transitions are sorted by ``(prev, time)`` (a CSR by previous item in time order); a row
    reads ``[start_i, searchsorted(i, t))`` of its last item, so a batch costs its rows'
    transitions only. Undecayed, one more transition outweighs the popularity term
    (``popularity_weight < 1``); decayed, an old transition may weigh less than it.

    Args:
        half_life_days: None: every transition before ``t`` counts 1; a number: it weighs
            ``0.5 ** ((t - time) / half_life)`` (``time`` = the next event's time).
        popularity_weight: Weight of the normalised causal popularity (in [0, 1)); 0 leaves
            ties among equal counts.
    """

    def __init__(self, half_life_days: float | None = None, popularity_weight: float = 1e-3):
        if half_life_days is not None and not half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0 or None, got {half_life_days}")
        if not 0 <= popularity_weight < 1:
            raise ValueError(f"popularity_weight must be in [0, 1), got {popularity_weight}")
        self.half_life_days = half_life_days
        self.popularity_weight = popularity_weight
        self.keys: Tensor | None = None  # [P] prev * span + (time - t0), sorted
        self.next_items: Tensor | None = None  # [P]
        self.times: Tensor | None = None  # [P]
        self.log: EventLog | None = None
        self.num_items, self.t0, self.span = 0, 0, 2  # set by fit

    def fit(self, dm: AmazonDataModule) -> Self:
        """Sorts every transition of ``dm`` (:func:`event_transitions`) by previous item, then
        time; reads the event log for the popularity term."""
        prev, nxt, time = event_transitions(dm)  # [P] each
        self.num_items = dm.num_items
        self.t0 = int(time.min()) if len(time) else 0
        self.span = (int(time.max()) - self.t0 if len(time) else 0) + 2  # > any time - t0
        keys, order = torch.sort(prev * self.span + (time - self.t0), stable=True)
        self.keys, self.next_items, self.times = keys, nxt[order], time[order]
        self.log = event_log(dm) if self.popularity_weight > 0 else None
        return self

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N + 1]`` from the transitions of each row's last history item before its
        ``target_time`` (a row without history gets the popularity term only)."""
        self._check_fitted(self.keys)
        last, t = last_items(batch), batch["target_time"].long()  # [B] each
        row_start = last * self.span
        cut = row_start + (t - self.t0).clamp(0, self.span - 1)  # key of (last, t)
        start = torch.searchsorted(self.keys, row_start)  # [B]
        stop = torch.searchsorted(self.keys, cut)  # [B] transitions of last with time < t
        row, idx = spans(start, stop)  # [M]
        if self.half_life_days is None:
            weight = torch.ones(len(idx), dtype=torch.float64)
        else:
            age = (self.times[idx] - t[row]).to(torch.float64)  # [M] <= 0
            weight = torch.exp2(age / (self.half_life_days * DAY))
        cols = self.num_items + 1
        out = torch.zeros(len(t), cols, dtype=torch.float64)
        out.view(-1).index_add_(0, row * cols + self.next_items[idx], weight)
        out = out.to(torch.float32)  # [B, N + 1]
        if self.log is not None:
            counts = per_time(self.log.counts_before, t).to(torch.float32)  # [B, N + 1]
            top = counts.max(dim=1, keepdim=True).values.clamp_min(1.0)
            out = out + self.popularity_weight * counts / top
        return _padding_out(out)


class BlendBaseline(Baseline):
    """A weighted blend of two baselines: ``first``'s scores + ``weight`` x ``second``'s.

    E.g. causal co-occurrence + 0.1 x the 3-day count (what followed the last item, broken by
    what sells now). Blends nest (``first`` may itself be a blend).

    Args:
        first: A baseline, or its ``{class_path, init_args}`` spec.
        second: A baseline, or its spec.
        weight: Factor of ``second``'s scores (finite).
    """

    def __init__(
        self,
        first: Baseline | dict[str, Any],
        second: Baseline | dict[str, Any],
        weight: float = 1.0,
    ) -> None:
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight}")
        self.first = instantiate(first, Baseline, "BlendBaseline.first")
        self.second = instantiate(second, Baseline, "BlendBaseline.second")
        self.weight = float(weight)

    def fit(self, dm: AmazonDataModule) -> Self:
        """Fits both baselines."""
        self.first.fit(dm)
        self.second.fit(dm)
        return self

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N + 1]`` = ``first + weight * second`` (column 0 = ``-inf``)."""
        blend = self.first.scores(batch) + self.weight * self.second.scores(batch)
        return _padding_out(blend)


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
