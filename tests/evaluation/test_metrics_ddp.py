"""RankingMetrics/SlicedRankingMetrics under 2-process CPU DDP (gloo) equal one process exactly."""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmrec.evaluation import rank_from_scores
from mmrec.evaluation.metrics import RankingMetrics
from mmrec.evaluation.slices import SlicedRankingMetrics

USERS, ITEMS, SPLIT = 23, 40, 15  # odd, split 15 / 8 with no padding or duplicated user


def _case():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (USERS, ITEMS + 1), generator=g).float()
    targets = torch.randint(1, ITEMS + 1, (USERS, 3), generator=g)
    targets[::2, 1:] = 0
    exclude = torch.randint(0, ITEMS + 1, (USERS, 5), generator=g)
    times = torch.randint(1_300_000_000, 1_400_000_000, (USERS,), generator=g)
    hist = torch.randint(0, 70, (USERS,), generator=g)
    return rank_from_scores(scores, targets, exclude), targets, times, hist


def _metrics():
    sliced = SlicedRankingMetrics(ks=(1, 10))
    sliced.set_item_train_counts(torch.arange(ITEMS + 1) % 7)
    return RankingMetrics(ks=(1, 10)), sliced


def _run(rank_metrics, sliced, ranks, targets, times, hist, batch):
    for lo in range(0, ranks.shape[0], batch):
        sl = slice(lo, lo + batch)
        rank_metrics.update(ranks[sl])
        sliced.update(ranks[sl], times[sl], hist[sl], targets[sl])
    return {**rank_metrics.compute(), **sliced.compute()}


def _worker(rank: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        ranks, targets, times, hist = _case()
        part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, USERS)
        result = _run(*_metrics(), ranks[part], targets[part], times[part], hist[part], batch=4)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_single_process(tmp_path):
    ranks, targets, times, hist = _case()
    single = _run(*_metrics(), ranks, targets, times, hist, batch=7)
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    assert set(ddp) == set(single)
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, atol=0, rtol=0, msg=key)
    # every user counted once: the holiday slices partition the users
    users = sum(
        int(v) for k, v in ddp.items() if k.startswith("slice/holiday=") and k.endswith("/users")
    )
    assert users == USERS and not math.isnan(float(ddp["ndcg@10"]))
    part = _run(*_metrics(), ranks[:SPLIT], targets[:SPLIT], times[:SPLIT], hist[:SPLIT], batch=4)
    assert part["ndcg@10"] != single["ndcg@10"]  # the shards differ, so the sync did the work
