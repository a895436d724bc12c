"""Full-catalogue ranking: exact ranks, chunk invariance, top-K, sampled candidates, slices."""

from __future__ import annotations

import csv
import datetime as dt
import math

import pytest
import torch

from mmrec.evaluation import (
    SampledCandidates,
    SlicedRankingMetrics,
    evaluate_scores,
    plot_metric_by_month,
    rank_from_scores,
    rank_targets,
    topk_items,
    write_slices_csv,
)
from mmrec.evaluation.metrics import RankingMetrics
from mmrec.evaluation.slices import popularity_buckets
from tests.evaluation.reference_ranking import reference_ranks


def _vectors(seed: int, users: int, items: int, dim: int = 4, ties: bool = True):
    g = torch.Generator().manual_seed(seed)
    # small integer vectors: integer dot products, exact in float32, many ties
    if ties:
        return torch.randint(-2, 3, (users, dim), generator=g).float(), torch.randint(
            -2, 3, (items + 1, dim), generator=g
        ).float()
    return torch.randn(users, dim, generator=g), torch.randn(items + 1, dim, generator=g)


def _ids(seed: int, users: int, items: int, width: int, fill: int):
    g = torch.Generator().manual_seed(seed)
    out = torch.randint(1, items + 1, (users, width), generator=g)
    keep = torch.arange(width).expand(users, width) < torch.randint(
        fill, width + 1, (users, 1), generator=g
    )
    return out * keep


@pytest.mark.parametrize("width", [4, 1])  # 1: the in-place leave-one-out count
@pytest.mark.parametrize("ties", [True, False])
def test_rank_targets_matches_reference_sort(ties, width):
    u, it = _vectors(0, users=19, items=40, ties=ties)
    targets = _ids(1, 19, 40, width=width, fill=1)  # may repeat ids: repeats get inf
    exclude = _ids(2, 19, 40, width=6, fill=0)  # may overlap targets: targets still ranked
    ranks = rank_targets(u, it, targets, exclude)
    scores = (u @ it.T).numpy()
    for row in range(19):
        t = targets[row].tolist()
        want = reference_ranks(scores[row], t, [x for x in exclude[row].tolist() if x])
        got = [ranks[row, j].item() for j, x in enumerate(t) if x and x not in t[:j]]
        assert sorted(got) == sorted(want), row
        assert torch.isinf(ranks[row][targets[row] == 0]).all()
    assert torch.isinf(ranks).sum() == (targets == 0).sum() + sum(
        len([x for j, x in enumerate(r) if x and x in r[:j]]) for r in targets.tolist()
    )


def test_exclusion_switch_and_padding_item():
    u, it = torch.ones(1, 1), torch.tensor([[100.0], [1.0], [3.0], [2.0]])  # item 0 would win
    assert rank_targets(u, it, torch.tensor([[1]]), torch.tensor([[2, 3]])).item() == 1
    assert (
        rank_targets(
            u, it, torch.tensor([[1]]), torch.tensor([[2, 3]]), exclude_history=False
        ).item()
        == 3
    )
    # an excluded item that is a target is still ranked
    assert rank_targets(u, it, torch.tensor([[2]]), torch.tensor([[2]])).item() == 1


@pytest.mark.parametrize("budget", [1e-4, 0.01, 256])
def test_chunking_and_sort_path_do_not_change_ranks(budget):
    u, it = _vectors(3, users=33, items=70)
    targets, exclude = _ids(4, 33, 70, width=5, fill=1), _ids(5, 33, 70, width=9, fill=0)
    base = rank_targets(u, it, targets, exclude)
    assert torch.equal(rank_targets(u, it, targets, exclude, memory_budget_mb=budget), base)
    assert torch.equal(
        rank_targets(u, it, targets, exclude, memory_budget_mb=budget, sort_threshold=0), base
    )
    scores = u @ it.T
    before = scores.clone()
    assert torch.equal(rank_from_scores(scores, targets, exclude, memory_budget_mb=budget), base)
    assert torch.equal(scores, before)  # input not modified


def test_minus_inf_scores_and_nan_error():
    s = torch.tensor([[0.0, 3.0, -math.inf, 2.0, -math.inf, 5.0]])
    for thr in (0, 32):
        assert rank_from_scores(s, [[2, 3]], [[5]], sort_threshold=thr).tolist() == [[4.0, 2.0]]
        assert rank_from_scores(s, [[2]], [[5]], sort_threshold=thr).tolist() == [
            [4.0]
        ]  # ties with -inf
    with pytest.raises(ValueError, match="NaN"):
        rank_from_scores(torch.tensor([[0.0, math.nan, 1.0]]), [[1]])
    with pytest.raises(ValueError, match=r"item ids in 0\.\.2"):
        rank_from_scores(torch.zeros(1, 3), [[3]])


def test_memory_bound_for_1m_items_100k_users():
    """Reasoning check (not run at scale): per chunk the score block is u * (N+1) * 4 bytes and
    the comparison block u * T * n_chunk bytes; with the default budget (256 MB on an accelerator,
    32 MB on CPU) both stay far under 4 GB for N = 1M, whatever the number of users (chunks are
    processed one after another)."""
    from mmrec.evaluation.ranking import _budget, _user_chunk

    assert (
        _budget(None, torch.device("cpu"), 12_102) == 32
        and _budget(None, torch.device("cuda"), 12_102) == 256
    )
    assert (
        _budget(8, torch.device("cuda"), 12_102) == 8
        and _budget(8, torch.device("cpu"), 1_000_001) == 8
    )
    # CPU default: at least 32 users per block, so the item matrix is not re-read for every 2 users
    cpu_1m = _budget(None, torch.device("cpu"), 1_000_001)
    assert _user_chunk(1_000_001, 8, cpu_1m / 2) == 32 and cpu_1m < 600
    assert _user_chunk(12_102, 8, _budget(None, torch.device("cpu"), 12_102) / 2) == 173
    n_cols, budget = 1_000_001, 256
    u = _user_chunk(n_cols, 8, budget / 2)
    assert 1 <= u <= 100_000
    assert u * n_cols * 4 <= budget * 2**20
    item_vecs = n_cols * 64 * 4
    assert item_vecs + budget * 2**20 * 2 < 4 * 2**30


def test_topk_items_matches_full_sort():
    u, it = _vectors(6, users=9, items=30, ties=False)
    exclude = _ids(7, 9, 30, width=5, fill=0)
    scores, items = topk_items(u, it, 7, exclude, memory_budget_mb=1e-4)
    full = u @ it.T
    full[:, 0] = -math.inf
    full.scatter_(1, exclude, -math.inf)
    want = full.sort(dim=1, descending=True)
    assert torch.equal(items, want.indices[:, :7]) and torch.allclose(scores, want.values[:, :7])
    assert not (items == 0).any()
    # fewer candidates than k: tail padded with item 0 / -inf
    s2, i2 = topk_items(torch.ones(1, 1), torch.arange(4.0).unsqueeze(1), 3, torch.tensor([[3, 2]]))
    assert i2.tolist() == [[1, 0, 0]] and s2[0, 1:].isinf().all()
    with pytest.raises(ValueError, match="k must be in 1..3"):
        topk_items(torch.ones(1, 1), torch.arange(4.0).unsqueeze(1), 4)


def test_evaluate_scores_lists_and_tensors_agree():
    g = torch.Generator().manual_seed(8)
    scores = torch.randint(0, 5, (7, 16), generator=g).float()
    targets = [[3], [4, 5], [1], [15, 2, 6], [7], [8], [9, 10]]
    exclude = [[1, 2], [], [3], [4], [], [5, 6, 7], [11]]
    a = evaluate_scores(scores, targets, exclude, ks=(5,))
    pad = lambda rows, w: torch.tensor([r + [0] * (w - len(r)) for r in rows])  # noqa: E731
    b = evaluate_scores(scores, pad(targets, 3), pad(exclude, 3), ks=(5,))
    assert a == b and set(a) == {
        "mrr",
        "hr@5",
        "recall@5",
        "precision@5",
        "f1@5",
        "ndcg@5",
        "mrr@5",
        "map@5",
    }
    assert all(isinstance(v, float) for v in a.values())


def test_sampled_candidates_rank_and_labels():
    u, it = _vectors(9, users=12, items=300, ties=False)
    targets, exclude = _ids(10, 12, 300, width=2, fill=1), _ids(11, 12, 300, width=4, fill=0)
    sampler = SampledCandidates(num_negatives=20, seed=3)
    ranks = sampler.rank(u, it, targets, exclude)
    assert torch.equal(ranks, sampler.rank(u, it, targets, exclude))  # seeded
    finite = ranks[torch.isfinite(ranks)]
    assert finite.min() >= 1 and finite.max() <= 22
    full = rank_targets(u, it, targets, exclude)
    assert (ranks[torch.isfinite(ranks)] <= full[torch.isfinite(full)]).all()  # fewer competitors
    # popularity weights: only items with weight can be negatives -> all-zero weights but one item
    w = torch.zeros(301)
    w[1:6] = 1.0
    with pytest.raises(ValueError, match="fewer than num_negatives"):
        SampledCandidates(num_negatives=10, weights=w).rank(u, it, targets)
    m = RankingMetrics(ks=(10,), sampled=True)
    m.update(ranks)
    assert all(k.startswith("sampled_") for k in m.compute())


def _ts(y: int, m: int, d: int) -> int:
    return int(dt.datetime(y, m, d, 12, tzinfo=dt.timezone.utc).timestamp())


def test_slices_values_csv_and_png(tmp_path):
    ranks = torch.tensor([[1.0, math.inf], [20.0, math.inf], [2.0, 5.0], [math.inf, math.inf]])
    targets = torch.tensor([[1, 0], [2, 0], [3, 4], [0, 0]])
    times = torch.tensor([_ts(2013, 12, 1), _ts(2013, 12, 31), _ts(2014, 1, 3), _ts(2014, 1, 4)])
    hist = torch.tensor([1, 7, 60, 3])
    sl = SlicedRankingMetrics(ks=(10,), prefix="test/")
    sl.set_item_train_counts(torch.tensor([0, 50, 40, 1, 0] + [2] * 5))  # item 4 unseen
    sl.update(ranks, times, hist, targets)
    out = {k: float(v) for k, v in sl.compute().items()}
    assert (
        out["test/slice/month=2013-12/hr@10"] == 0.5 and out["test/slice/month=2013-12/users"] == 2
    )
    assert out["test/slice/month=2014-01/users"] == 1  # user 4 has no targets: skipped
    assert out["test/slice/holiday=in/users"] == 2 and out["test/slice/holiday=out/mrr"] == 0.5
    assert out["test/slice/history=1-4/hr@10"] == 1 and out["test/slice/history=50+/users"] == 1
    assert out["test/slice/popularity=head/users"] == 2  # items 1, 2 (top 20% of 8 seen = 2)
    assert out["test/slice/popularity=tail/mrr"] == 0.5  # item 3 (rank 2)
    assert out["test/slice/popularity=unseen/mrr"] == pytest.approx(
        0.2, abs=1e-9
    )  # item 4 (rank 5, other target kept ahead)
    assert "test/slice/history=20-49/users" not in out
    rows = list(csv.DictReader(write_slices_csv(out, tmp_path / "slices.csv").open()))
    assert {r["slice"] for r in rows} == {"month", "holiday", "history", "popularity"}
    png = plot_metric_by_month(out, tmp_path / "ndcg_by_month.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_popularity_buckets_and_holiday_wrap():
    b = popularity_buckets(torch.tensor([9, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]))
    assert b.tolist() == [3, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    sl = SlicedRankingMetrics(
        ks=(1,), holiday_start=(12, 20), holiday_end=(1, 5), history_edges=(1, 10)
    )
    sl.update(
        torch.tensor([[1.0], [1.0]]),
        torch.tensor([_ts(2014, 1, 2), _ts(2014, 2, 2)]),
        torch.tensor([0, 10]),
        torch.tensor([[1], [2]]),
    )
    out = sl.compute()
    assert int(out["slice/holiday=in/users"]) == 1 and int(out["slice/holiday=out/users"]) == 1
    assert int(out["slice/history=0/users"]) == 1 and int(out["slice/history=10+/users"]) == 1
