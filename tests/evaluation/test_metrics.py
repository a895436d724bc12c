"""RankingMetrics: definitions against NumPy and torchmetrics, invariances, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import (
    RetrievalHitRate,
    RetrievalMAP,
    RetrievalMRR,
    RetrievalNormalizedDCG,
    RetrievalPrecision,
    RetrievalRecall,
)

from mmrec.evaluation import rank_from_scores
from mmrec.evaluation.metrics import RankingMetrics, metric_names, per_user_metrics
from tests.evaluation.reference_ranking import reference_mean, reference_metrics, reference_ranks

KS = (1, 3, 10)


def _random_case(seed: int, users: int, items: int, max_t: int, max_e: int, ties: bool):
    g = torch.Generator().manual_seed(seed)
    if ties:
        scores = torch.randint(0, 4, (users, items + 1), generator=g).float()
    else:
        scores = (
            torch.rand(users, items + 1, generator=g) + 1.0
        )  # positive: torchmetrics drops preds <= 0
    targets = torch.zeros(users, max_t, dtype=torch.long)
    exclude = torch.zeros(users, max_e, dtype=torch.long)
    for u in range(users):
        perm = torch.randperm(items, generator=g) + 1
        nt = int(torch.randint(1, max_t + 1, (1,), generator=g))
        ne = int(torch.randint(0, max_e + 1, (1,), generator=g))
        targets[u, :nt] = perm[:nt]
        exclude[u, :ne] = perm[nt : nt + ne]
    return scores, targets, exclude


def _numpy_metrics(scores, targets, exclude, ks):
    per_user = []
    for u in range(scores.shape[0]):
        t = [int(x) for x in targets[u] if x > 0]
        r = reference_ranks(scores[u].numpy(), t, [int(x) for x in exclude[u] if x > 0])
        row = {}
        for k in ks:
            row.update(reference_metrics(r, k))
        per_user.append(row)
    return reference_mean(per_user)


@pytest.mark.parametrize(
    ("seed", "max_t", "max_e", "ties"),
    [(0, 1, 0, False), (1, 1, 5, True), (2, 4, 6, True), (3, 5, 0, True), (4, 3, 8, False)],
)
def test_matches_numpy_reference(seed, max_t, max_e, ties):
    scores, targets, exclude = _random_case(
        seed, users=23, items=30, max_t=max_t, max_e=max_e, ties=ties
    )
    metric = RankingMetrics(ks=KS)
    metric.update(rank_from_scores(scores, targets, exclude))
    got = {k: float(v) for k, v in metric.compute().items()}
    want = _numpy_metrics(scores, targets, exclude, KS)
    assert set(got) == set(want) == set(metric_names(KS))
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def _torchmetrics_values(scores, targets, exclude, k):
    """torchmetrics on the valid candidates (item 0 and excluded items removed)."""
    preds, rel, idx = [], [], []
    for u in range(scores.shape[0]):
        ex = {int(x) for x in exclude[u] if x > 0} - {int(x) for x in targets[u]}
        cand = [c for c in range(1, scores.shape[1]) if c not in ex]
        preds.append(scores[u, cand])
        rel.append(torch.isin(torch.tensor(cand), targets[u][targets[u] > 0]))
        idx.append(torch.full((len(cand),), u))
    preds, rel, idx = torch.cat(preds), torch.cat(rel), torch.cat(idx)
    out = {}
    for name, cls in [
        ("hr", RetrievalHitRate),
        ("recall", RetrievalRecall),
        ("precision", RetrievalPrecision),
        ("ndcg", RetrievalNormalizedDCG),
        ("mrr", RetrievalMRR),
        ("map", RetrievalMAP),
    ]:
        out[f"{name}@{k}"] = float(cls(top_k=k)(preds, rel, indexes=idx))
    out["mrr"] = float(RetrievalMRR()(preds, rel, indexes=idx))
    return out


@pytest.mark.parametrize(("seed", "max_t", "max_e"), [(10, 1, 0), (11, 1, 6), (12, 4, 6)])
def test_matches_torchmetrics_tie_free(seed, max_t, max_e):
    """Tie-free positive scores (torchmetrics 1.9 breaks ties by sort order and zeroes the
    relevance of items scored <= 0). torchmetrics' MAP@K divides by the hits inside the top K,
    ours by min(|rel|, K): they agree for single-target users only, compared there."""
    scores, targets, exclude = _random_case(
        seed, users=17, items=40, max_t=max_t, max_e=max_e, ties=False
    )
    for k in (1, 5, 10):
        metric = RankingMetrics(ks=(k,))
        metric.update(rank_from_scores(scores, targets, exclude))
        got = {key: float(v) for key, v in metric.compute().items()}
        want = _torchmetrics_values(scores, targets, exclude, k)
        for key, value in want.items():
            if key.startswith("map") and max_t > 1:
                continue
            assert got[key] == pytest.approx(value, abs=1e-6), (k, key)


def test_constant_scores_get_zero():
    scores = torch.zeros(6, 21)
    targets = torch.tensor([[1, 0], [5, 7], [20, 0], [3, 4], [2, 0], [9, 10]])
    ranks = rank_from_scores(scores, targets)
    # ties count against the model: targets sit after all 20 - |rel| non-relevant items
    assert ranks[0, 0] == 20 and ranks[1].tolist() == [19, 20]
    metric = RankingMetrics(ks=(1, 10))
    metric.update(ranks)
    values = metric.compute()
    assert all(float(v) == 0.0 for k, v in values.items() if k != "mrr")
    assert float(values["mrr"]) < 0.06


def test_recall_monotone_in_k_and_bounds():
    scores, targets, exclude = _random_case(5, users=40, items=50, max_t=6, max_e=5, ties=True)
    metric = RankingMetrics(ks=(1, 5, 10, 50))
    metric.update(rank_from_scores(scores, targets, exclude))
    v = {k: float(x) for k, x in metric.compute().items()}
    assert v["recall@1"] <= v["recall@5"] <= v["recall@10"] <= v["recall@50"] == 1.0
    assert v["hr@1"] <= v["hr@10"] and v["mrr@1"] <= v["mrr@10"] <= v["mrr"]
    assert all(0.0 <= x <= 1.0 for x in v.values())


def test_hand_computed_multi_target():
    # ranks 1 and 3 of three relevant items, K = 3
    values, keep = per_user_metrics(torch.tensor([[3.0, 1.0, math.inf]]), torch.tensor([3]), (3,))
    got = dict(zip(metric_names((3,)), values[0].tolist(), strict=True))
    assert keep.tolist() == [True]
    assert (
        got["hr@3"] == 1
        and got["recall@3"] == pytest.approx(2 / 3)
        and got["precision@3"] == pytest.approx(2 / 3)
    )
    assert got["f1@3"] == pytest.approx(2 / 3)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
    assert got["map@3"] == pytest.approx((1 + 2 / 3) / 3)
    assert got["mrr"] == 1 and got["mrr@3"] == 1


def test_batching_is_exact_and_users_without_targets_are_skipped():
    scores, targets, exclude = _random_case(7, users=31, items=25, max_t=3, max_e=4, ties=True)
    ranks = rank_from_scores(scores, targets, exclude)
    whole = RankingMetrics(ks=(5,))
    whole.update(ranks)
    parts = RankingMetrics(ks=(5,))
    for lo in range(0, 31, 4):
        parts.update(ranks[lo : lo + 4])
    parts.update(torch.full((2, 3), math.inf))  # two users without a relevant item
    with pytest.warns(UserWarning, match="skipped 2 users"):
        got = parts.compute()
    assert int(parts.users) == 31
    for key, value in whole.compute().items():
        assert torch.equal(got[key], value), key


def test_prefix_sampled_and_errors():
    m = RankingMetrics(ks=(10,), prefix="val/", sampled=True)
    assert m.keys()[:2] == ["val/sampled_mrr", "val/sampled_hr@10"]
    with pytest.raises(ValueError, match="positive integers"):
        RankingMetrics(ks=(0,))
    with pytest.raises(ValueError, match="num_relevant is smaller"):
        m.update(torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[U, T\]"):
        m.update(torch.tensor([1.0]))
    np.testing.assert_equal(len(m.keys()), 8)
