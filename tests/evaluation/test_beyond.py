"""BeyondAccuracy: hand-computed coverage / popularity percentile / novelty, batch and DDP
invariance, top-K from scores."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmrec.evaluation.beyond import (
    BeyondAccuracy,
    popularity_percentile,
    self_information,
    topk_from_scores,
)

# 5 items; training counts of items 1..5 = 10, 5, 5, 0, 2 (22 events); index 0 = padding
COUNTS = torch.tensor([0, 10, 5, 5, 0, 2])
TOP = torch.tensor([[1, 2], [1, 3], [4, 0]])  # 3 users' top-2 lists; user 2 has one item


def nov(c: int) -> float:
    return -math.log2((c + 1) / (22 + 5))


def metric(ks=(1, 2), prefix="test/") -> BeyondAccuracy:
    m = BeyondAccuracy(ks=ks, prefix=prefix)
    m.set_item_train_counts(COUNTS)
    return m


def test_lookup_tables_by_hand():
    # ascending counts 0 (item 4), 2 (5), 5, 5 (2, 3: mid-rank 3.5), 10 (1); (rank - 1) / 4
    pct = popularity_percentile(COUNTS)
    assert pct.tolist() == [0.0, 1.0, 0.625, 0.625, 0.0, 0.25]
    assert popularity_percentile(torch.tensor([0, 3, 3, 3])).tolist() == [0, 0.5, 0.5, 0.5]
    assert popularity_percentile(torch.tensor([0, 7])).tolist() == [0.0, 0.5]
    info = self_information(COUNTS)
    assert info[0] == 0
    torch.testing.assert_close(
        info[1:], torch.tensor([nov(c) for c in (10, 5, 5, 0, 2)], dtype=torch.float64)
    )
    assert float((2.0 ** -info[1:]).sum()) == pytest.approx(1.0)  # smoothed p sums to 1


def test_hand_computed_values():
    m = metric()
    m.update(TOP)
    out = {k: float(v) for k, v in m.compute().items()}
    assert list(out) == m.keys()
    # K=1: slots 1, 1, 4
    assert out["test/coverage@1"] == pytest.approx(2 / 5)
    assert out["test/pop_percentile@1"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["test/novelty@1"] == pytest.approx((2 * nov(10) + nov(0)) / 3)
    # K=2: slots 1, 2, 1, 3, 4 (the 0 is skipped)
    assert out["test/coverage@2"] == pytest.approx(4 / 5)
    assert out["test/pop_percentile@2"] == pytest.approx((1 + 0.625 + 1 + 0.625 + 0) / 5)
    assert out["test/novelty@2"] == pytest.approx((2 * nov(10) + 2 * nov(5) + nov(0)) / 5)


def test_item_zero_ignored_and_batch_split_invariant():
    one = metric()
    one.update(TOP)
    two = metric()
    two.update(TOP[:1])
    two.update(TOP[1:])
    two.update(torch.zeros(4, 2, dtype=torch.long))  # users with no recommendation: nothing
    a, b = one.compute(), two.compute()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    assert two.counts[:, 0].tolist() == [4, 1 + 8]  # zeros are counted at index 0 (K=1, 2)
    assert float(b["test/coverage@2"]) == pytest.approx(4 / 5)  # ... and never used


def test_longer_lists_than_max_k_are_cut():
    m = metric(ks=(1,), prefix="")
    m.update(torch.tensor([[1, 5, 4], [2, 5, 4]]))
    out = m.compute()
    assert set(out) == {"coverage@1", "pop_percentile@1", "novelty@1"}
    assert float(out["coverage@1"]) == pytest.approx(2 / 5)
    assert float(out["pop_percentile@1"]) == pytest.approx((1 + 0.625) / 2)


def test_reset_and_resize():
    m = metric()
    m.update(TOP)
    m.reset()
    assert int(m.counts.sum()) == 0
    m.set_item_train_counts(torch.tensor([0, 1, 1, 1, 1, 1, 1, 1]))  # 7 items
    assert m.counts.shape == (2, 8) and m.num_items == 7
    m.update(torch.tensor([[7, 6]]))
    assert float(m.compute()["test/coverage@2"]) == pytest.approx(2 / 7)


def test_errors():
    m = BeyondAccuracy(ks=(1, 2))
    with pytest.raises(RuntimeError, match="set_item_train_counts"):
        m.update(TOP)
    m.set_item_train_counts(COUNTS)
    with pytest.raises(ValueError, match=r"K >= max\(ks\) = 2"):
        m.update(TOP[:, :1])
    with pytest.raises(ValueError, match=r"ids in 0\.\.5"):
        m.update(torch.tensor([[1, 6]]))
    with pytest.raises(ValueError, match="non-negative"):
        m.set_item_train_counts(torch.tensor([0, -1, 2]))


def test_no_items_give_nan_means():
    m = metric()
    m.update(torch.zeros(2, 2, dtype=torch.long))
    with pytest.warns(UserWarning, match="saw no recommended item"):
        out = m.compute()
    assert float(out["test/coverage@2"]) == 0.0 and math.isnan(float(out["test/novelty@2"]))


def test_topk_from_scores():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0], [9.0, 2.0, 1.0, 0.0, 3.0]])  # 4 items
    exclude = torch.tensor([[2, 0], [4, 1]])
    top = topk_from_scores(scores, 3, exclude)
    assert top.tolist() == [[4, 3, 1], [2, 3, 0]]  # col 0 never; row 2 has only 2 items left
    assert topk_from_scores(scores, 2).tolist() == [[2, 4], [4, 1]]
    with pytest.raises(ValueError, match=r"k must be in 1\.\.4"):
        topk_from_scores(scores, 5)


# ------------------------------------------------------------------ DDP: 2 processes == 1
def _lists() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    top = torch.randint(0, 6, (11, 3), generator=g)
    return top


def _worker(rank: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        m = metric(ks=(1, 3))
        top = _lists()
        m.update(top[:4] if rank == 0 else top[4:])
        result = m.compute()
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_single_process(tmp_path):
    single = metric(ks=(1, 3))
    single.update(_lists())
    expected = single.compute()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=0, rtol=0, msg=key)
    part = metric(ks=(1, 3))
    part.update(_lists()[:4])
    assert float(part.compute()["test/coverage@3"]) != float(expected["test/coverage@3"])
