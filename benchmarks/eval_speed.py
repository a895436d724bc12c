"""Full-ranking evaluation speed/memory: mmrec.evaluation vs torchmetrics' RetrievalNormalizedDCG.

Run from the repo root:  .venv/bin/python -m benchmarks.eval_speed
Writes benchmarks/results/eval_speed.md. Each case runs in its own process so its peak RSS is
its own. Vectors are random (D = 64, tie-free scores); on Beauty 2014 the users' real histories
(leave-one-out: last item = target, all earlier items excluded) are used when ../shared/data
exists. torchmetrics gets the SAME score rows (excluded items and item 0 dropped) for a subset of
users, and its NDCG@10 must equal ours on that subset.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchmetrics.retrieval import RetrievalNormalizedDCG

from benchmarks.common import REPO as ROOT
from benchmarks.common import hardware
from mmrec.evaluation import rank_targets
from mmrec.evaluation.metrics import RankingMetrics, per_user_metrics

BEAUTY = ROOT.parent / "shared" / "data" / "amazon2014-beauty" / "interactions.tsv"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def beauty_case(g: torch.Generator) -> tuple[int, int, torch.Tensor, torch.Tensor, str]:
    if BEAUTY.exists():
        import polars as pl

        df = pl.read_csv(BEAUTY, separator="\t", columns=["user_idx", "item_idx"])
        seqs = (
            df.group_by("user_idx", maintain_order=True)
            .agg(pl.col("item_idx"))["item_idx"]
            .to_list()
        )
        users, items = len(seqs), int(df["item_idx"].max())
        width = max(len(s) for s in seqs) - 1
        targets = torch.tensor([[s[-1]] for s in seqs])
        exclude = torch.zeros(users, width, dtype=torch.long)
        for i, s in enumerate(seqs):
            exclude[i, : len(s) - 1] = torch.tensor(s[:-1])
        return (
            users,
            items,
            targets,
            exclude,
            f"Beauty 2014 ({BEAUTY.parent.name}, real LOO histories)",
        )
    users, items = 22_363, 12_101
    return (
        users,
        items,
        torch.randint(1, items + 1, (users, 1), generator=g),
        torch.randint(1, items + 1, (users, 8), generator=g),
        "Beauty 2014 sizes (synthetic histories)",
    )


def torchmetrics_ndcg(user_vecs, item_vecs, targets, exclude) -> tuple[float, float]:
    """torchmetrics on the same scores: matmul, drop item 0 + excluded, flatten, update, compute."""
    t0 = time.perf_counter()
    metric = RetrievalNormalizedDCG(top_k=10)
    scores = user_vecs @ item_vecs.T  # [u, N+1]
    valid = torch.ones_like(scores, dtype=torch.bool)
    valid[:, 0] = False
    valid.scatter_(1, exclude, False)
    valid.scatter_(1, targets, True)
    rel = torch.zeros_like(valid)
    rel.scatter_(1, targets, True)
    idx = torch.arange(scores.shape[0]).unsqueeze(1).expand_as(scores)
    metric.update(scores[valid], rel[valid], indexes=idx[valid])
    value = float(metric.compute())
    return value, time.perf_counter() - t0


def run_case(case: str, tm_users: int) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if case == "beauty":
        users, items, targets, exclude, name = beauty_case(g)
    else:
        users, items, name = 2_000, 1_000_000, "synthetic 1M-item catalogue"
        targets = torch.randint(1, items + 1, (users, 1), generator=g)
        exclude = torch.randint(1, items + 1, (users, 10), generator=g)
    item_vecs = torch.randn(items + 1, 64, generator=g)
    # plant a signal of random strength so the targets spread over the ranks (NDCG well above 0)
    strength = torch.rand(users, 1, generator=g) * 1.5
    user_vecs = strength * item_vecs[targets[:, 0]] + torch.randn(users, 64, generator=g)
    rss_before = peak_rss_mb()

    t0 = time.perf_counter()
    ranks = rank_targets(user_vecs, item_vecs, targets, exclude)
    metric = RankingMetrics(ks=(10, 20))
    metric.update(ranks)
    ours = {k: float(v) for k, v in metric.compute().items()}
    t_ours = time.perf_counter() - t0
    rss_ours = peak_rss_mb()

    sub = slice(0, min(tm_users, users))
    tm_value, t_tm = torchmetrics_ndcg(user_vecs[sub], item_vecs, targets[sub], exclude[sub])
    values, _ = per_user_metrics(ranks[sub], None, (10,))
    ours_sub = float(values[:, 5].mean())  # column of ndcg@10
    assert abs(ours_sub - tm_value) < 1e-6, (
        f"NDCG@10 differs: mmrec {ours_sub} vs torchmetrics {tm_value}"
    )
    n_sub = sub.stop
    return {
        "case": name,
        "users": users,
        "items": items,
        "ndcg@10": ours["ndcg@10"],
        "hr@10": ours["hr@10"],
        "ours_s": t_ours,
        "ours_ups": users / t_ours,
        "tm_users": n_sub,
        "tm_s": t_tm,
        "tm_ups": n_sub / t_tm,
        "ndcg_sub_ours": ours_sub,
        "ndcg_sub_tm": tm_value,
        "peak_rss_ours_mb": rss_ours,
        "rss_inputs_mb": rss_before,
        "peak_rss_total_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["all", "beauty", "million"], default="all")
    parser.add_argument(
        "--tm-users-beauty", type=int, default=2_000, help="users given to torchmetrics (Beauty)"
    )
    parser.add_argument(
        "--tm-users-million", type=int, default=25, help="users given to torchmetrics (1M items)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_speed.md"
    )
    args = parser.parse_args()
    if args.case != "all":
        tm = args.tm_users_beauty if args.case == "beauty" else args.tm_users_million
        print(json.dumps(run_case(args.case, tm)))
        return
    rows = []
    for case in ("beauty", "million"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.eval_speed",
            "--case",
            case,
            "--tm-users-beauty",
            str(args.tm_users_beauty),
            "--tm-users-million",
            str(args.tm_users_million),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = [
        "# Evaluation speed: exact full ranking (mmrec) vs torchmetrics "
        "RetrievalNormalizedDCG(top_k=10)",
        "",
        "Command: `.venv/bin/python -m benchmarks.eval_speed`  ",
        f"Hardware: {hardware()}  ",
        "Random D=64 vectors (tie-free scores; user = random-strength multiple of its target's "
        "vector + noise); history items excluded; one target per user. mmrec time = "
        "scoring + exact ranks + all metrics at K=10,20; torchmetrics time = scoring + masking + "
        "update + compute of NDCG@10 only, on the first users (per-user rate compared). "
        "NDCG@10 of both on that subset is asserted equal (|diff| < 1e-6).",
        "",
        "| case | users x items | NDCG@10 / HR@10 (mmrec, all users) | mmrec users/s "
        "| torchmetrics users/s (users) | speed-up | NDCG@10 mmrec / torchmetrics (subset) "
        "| mmrec peak RSS (MB) | process peak RSS incl. torchmetrics (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['users']:,} x {r['items']:,} | "
            f"{r['ndcg@10']:.4f} / {r['hr@10']:.4f} | {r['ours_ups']:,.0f} ({r['ours_s']:.1f} s) | "
            f"{r['tm_ups']:,.1f} ({r['tm_users']:,}) | {r['ours_ups'] / r['tm_ups']:,.0f}x | "
            f"{r['ndcg_sub_ours']:.6f} / {r['ndcg_sub_tm']:.6f} | "
            f"{r['peak_rss_ours_mb']:,.0f} | {r['peak_rss_total_mb']:,.0f} |"
        )
    lines += [
        "",
        "Peak RSS is the process's (inputs included: 1M x 64 float32 item vectors = 256 MB) "
        "after the mmrec run, before torchmetrics. Memory bound at 1M items x 100k users: "
        "scoring is chunked over users in blocks (default budget: 32 MB on CPU but at least "
        "32 users per block, i.e. 32 x 1M float32 = 128 MB of scores, because every block "
        "streams the whole item matrix through the matmul; 256 MB on an "
        "accelerator), so it stays under ~1.5 GB whatever the number of users; time grows linearly "
        "(estimate: 100k / users/s above).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
