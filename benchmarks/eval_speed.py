"""Full-ranking evaluation speed/memory: mmrec.evaluation vs torchmetrics' RetrievalNormalizedDCG,
and the cost of item dynamics.

Run from the repo root:  .venv/bin/python -m benchmarks.eval_speed
Writes benchmarks/results/eval_speed.md. Each case runs in its own process so its peak RSS is
its own. Vectors are random (D = 64, tie-free scores); on Beauty 2014 the users' real histories
(leave-one-out: last item = target, all earlier items excluded) are used when ../shared/data
exists. torchmetrics gets the SAME score rows (excluded items and item 0 dropped) for a subset of
users, and its NDCG@10 must equal ours on that subset.

``--case dynamics`` (``.venv/bin/python -m benchmarks.eval_speed --case dynamics``) ranks the
same users in evaluation batches through the model's evaluation path with and without item
dynamics (``RecentDynamics`` at its defaults, a random last layer), each target at its own
time, on the real Beauty 2014 events (or Beauty-sized synthetic ones: ``--synthetic``), and
reports both throughputs and the dynamics' bytes per item. Writes
benchmarks/results/eval_speed_dynamics.md (``_synthetic.md`` with ``--synthetic``).
``--transitions`` adds ``TransitionDynamics`` to the dynamics (what followed each user's last
history item before the target's time; the log then knows its users) and writes
``eval_speed_transitions*.md``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def beauty_events(synthetic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Every event of Beauty 2014 (``user``, ``item``, ``time`` ``[E]`` in each user's order),
    or Beauty-sized synthetic events (Zipf-popular items, days over 2010-2014)."""
    if BEAUTY.exists() and not synthetic:
        import polars as pl

        df = pl.read_csv(BEAUTY, separator="\t", columns=["user_idx", "item_idx", "timestamp"])
        cols = [torch.from_numpy(df[c].to_numpy().astype("int64")) for c in df.columns]
        return (*cols, f"Beauty 2014 ({BEAUTY.parent.name}, real LOO histories and times)")
    g = torch.Generator().manual_seed(0)
    users, items, events = 22_363, 12_101, 198_502
    user = torch.sort(torch.randint(0, users, (events,), generator=g)).values
    weights = 1.0 / torch.arange(1, items + 1).double() ** 0.8
    item = torch.multinomial(weights, events, replacement=True, generator=g) + 1
    day = torch.randint(14_610, 16_436, (events,), generator=g)  # 2010-01-01 .. 2014-12-31
    order = torch.argsort(user * 100_000 + day, stable=True)  # each user's events in time order
    return user[order], item[order], day[order] * 86_400, "Beauty sizes (synthetic events)"


def eval_rows(
    user: torch.Tensor, item: torch.Tensor, when: torch.Tensor, protocol: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``targets [U, 1]``, ``target_time [U]`` and ``exclude [U, X]`` (0-padded history, in
    time order) of
    the users evaluated: ``loo``, each user's last event from the ones before it; ``temporal``,
    one-shot on the last 30 days: each user's first event in them, from the events before."""
    first = torch.ones(len(user), dtype=torch.bool)
    first[1:] = user[1:] != user[:-1]
    if protocol == "loo":
        target = torch.roll(first, -1)  # each user's last event
        history = ~target
    else:
        cut = (int(when.max()) // 86_400 - 30) * 86_400
        after = when >= cut
        first_after = after & (first | ~torch.roll(after, 1))
        has_history = torch.zeros(int(user.max()) + 1, dtype=torch.bool)
        has_history[user[~after]] = True
        target = first_after & has_history[user]
        has_target = torch.zeros_like(has_history)
        has_target[user[target]] = True
        history = ~after & has_target[user]
    row_of_user = torch.full((int(user.max()) + 1,), -1, dtype=torch.long)
    row_of_user[user[target]] = torch.arange(int(target.sum()))
    rows = row_of_user[user[history]]  # [H] row of each history event
    start = torch.searchsorted(user, user)  # first event of each event's user
    slot = (torch.arange(len(user)) - start)[history]  # position in the user's events
    exclude = torch.zeros(int(target.sum()), int(slot.max()) + 1, dtype=torch.long)
    exclude[rows, slot] = item[history]
    return item[target][:, None], when[target], exclude


def run_dynamics(
    batch: int, repeats: int, synthetic: bool, protocol: str, transitions: bool = False
) -> dict:
    """Evaluation batches ranked with and without item dynamics, best of ``repeats``."""
    from mmrec.data.eventlog import EventLog
    from mmrec.encoders.dynamics import RecentDynamics, TransitionDynamics
    from mmrec.module import MMRecModule

    torch.manual_seed(0)
    user, item, when, name = beauty_events(synthetic)
    targets, target_time, exclude = eval_rows(user, item, when, protocol)
    n_items, n_users = int(item.max()), len(targets)
    log = EventLog(item, when, n_items, users=user if transitions else None)
    dynamics = [RecentDynamics(), *([TransitionDynamics()] if transitions else [])]
    model = MMRecModule(num_items=n_items, num_users=n_users, d_model=64, dynamics=dynamics).eval()
    for member in model.dynamics:
        torch.nn.init.normal_(member.mlp[2].weight, std=0.5)
    seen = (exclude > 0).sum(1)  # [U] history length; the last history item of each row
    last = exclude.gather(1, (seen - 1).clamp_min(0)[:, None])  # [U, 1]
    mask = (seen > 0)[:, None]
    g = torch.Generator().manual_seed(0)
    item_vecs = torch.randn(n_items + 1, 64, generator=g)
    user_vecs = torch.rand(n_users, 1, generator=g) * 1.5 * item_vecs[targets[:, 0]]
    user_vecs += torch.randn(n_users, 64, generator=g)

    term_s = [0.0]  # time spent computing the term (the rest: gathering its rows, ranking)
    compute_term = model._term_of

    def timed_term(times: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = compute_term(times)
        term_s[0] += time.perf_counter() - t0
        return out

    model._term_of = timed_term

    def epoch(dynamics: bool) -> tuple[float, torch.Tensor]:
        model.set_event_log(log)  # an empty cache, as after each training epoch
        term_s[0] = 0.0
        t0, out = time.perf_counter(), []
        if dynamics:  # as the module's evaluation epochs start: all the rows' times at once
            model.prefetch_dynamics(target_time)
        for lo in range(0, n_users, batch):
            sl = slice(lo, lo + batch)
            args = (user_vecs[sl], item_vecs, targets[sl], exclude[sl])
            if dynamics:
                rows = {"target_time": target_time[sl], "item_ids": last[sl], "mask": mask[sl]}
                out.append(model._rank_call(rank_targets, rows, *args))
            else:
                out.append(rank_targets(*args))
        return time.perf_counter() - t0, torch.cat(out)

    times: dict[bool, list[float]] = {False: [], True: []}
    ranks, terms = {}, []
    for _ in range(repeats):  # interleaved: both see the same machine load
        for dyn in (False, True):
            seconds, ranks[dyn] = epoch(dyn)
            times[dyn].append(seconds)
        terms.append(term_s[0])
    ndcg = {}
    for dyn, r in ranks.items():
        metric = RankingMetrics(ks=(10,))
        metric.update(r)
        ndcg[dyn] = float(metric.compute()["ndcg@10"])
    cached_rows = len(model._term_cache)
    return {
        "case": name,
        "protocol": protocol,
        "users": n_users,
        "items": n_items,
        "events": len(item),
        "distinct_target_times": int(torch.unique(target_time).numel()),
        "batch": batch,
        "plain_s": min(times[False]),
        "dyn_s": min(times[True]),
        "term_s": terms[times[True].index(min(times[True]))],  # of the fastest pass
        "plain_ups": n_users / min(times[False]),
        "dyn_ups": n_users / min(times[True]),
        "ndcg_plain": ndcg[False],
        "ndcg_dyn": ndcg[True],
        "log_bytes_per_item": log.nbytes_per_item(),
        "log_event_bytes": (16 + 28 * transitions) * len(item),  # + int32 users, transitions
        "transitions": transitions,
        "cache_rows": cached_rows,
        "cache_bytes_per_item": 4 * cached_rows,
        "cache_mb_max": model.dynamics_cache_mb,
        "repeats": repeats,
        "all_s": {"plain": times[False], "dynamics": times[True]},
    }


def write_dynamics(
    results: list[dict], out: Path, command: str, load: tuple[float, float], note: str = ""
) -> None:
    r0 = results[0]
    members = "RecentDynamics + TransitionDynamics" if r0["transitions"] else "RecentDynamics"
    lines = [
        f"# Evaluation speed with item dynamics ({members}) against without",
        "",
        f"Command: `{command}`  ",
        f"Hardware: {hardware()}; load average (1 min) {load[0]:.2f} at the start, "
        f"{load[1]:.2f} at the end  ",
        f"Data: {r0['case']}: {r0['items']:,} items, {r0['events']:,} events; one target per "
        "user, ranked at its own time (`loo`: each user's last event; `temporal`: one-shot on "
        "the last 30 days, each user's first event there). Random D=64 vectors as above; "
        f"evaluation batches of {r0['batch']:,} users through `MMRecModule`'s ranking path "
        "(history excluded); the dynamics' cache is emptied before each pass, as after a "
        "training epoch, so every distinct time is computed once a pass. Best of "
        f'{r0["repeats"]} interleaved passes (the machine is shared: all passes listed). "Of '
        "which the term\": the fastest pass's time in computing the dynamics' term of its "
        "distinct times (`MMRecModule._term_of`); the rest is gathering each user's row of it "
        "into the scores, and the ranking.",
        "",
        "| protocol | users | distinct times | without: users/s (s) | with: users/s (s) "
        "| of which the term (s) | with / without | NDCG@10 without / with "
        "| all passes without / with (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        passes = [", ".join(f"{s:.2f}" for s in r["all_s"][k]) for k in ("plain", "dynamics")]
        lines.append(
            f"| {r['protocol']} | {r['users']:,} | {r['distinct_target_times']:,} "
            f"| {r['plain_ups']:,.0f} ({r['plain_s']:.2f}) | {r['dyn_ups']:,.0f} "
            f"({r['dyn_s']:.2f}) | {r['term_s']:.2f} | **{r['dyn_s'] / r['plain_s']:.2f}x** "
            f"| {r['ndcg_plain']:.4f} / {r['ndcg_dyn']:.4f} | {passes[0]} / {passes[1]} |"
        )
    lines += [
        "",
        "Memory of the dynamics per item: the event log's snapshots "
        f"(`EventLog.nbytes_per_item`, 64 snapshots): **{r0['log_bytes_per_item']:,.0f} "
        "bytes**, whatever the time span; plus the events themselves "
        f"({r0['log_event_bytes'] / 2**20:.1f} MB, {r0['log_event_bytes'] // r0['events']} bytes "
        "an event: time and item, and with TransitionDynamics the user (int32) and the "
        "transitions' next item, time and key). Evaluation cache of "
        "score-term rows (4 bytes per item and cached time, at most "
        f"`MMRecModule.dynamics_cache_mb` = {r0['cache_mb_max']:.0f} MB in all): "
        + ", ".join(
            f"{r['protocol']} {r['cache_rows']:,} rows = **{r['cache_bytes_per_item']:,} bytes "
            "per item**"
            for r in results
        )
        + ". No feature is stored: features are computed per distinct time from the log, in "
        "chunks of at most `memory_budget_mb` (64 MB) of temporaries.",
    ]
    if note:
        lines += ["", note]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["all", "beauty", "million", "dynamics"], default="all")
    parser.add_argument("--batch", type=int, default=1024, help="evaluation batch (dynamics)")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each (dynamics)")
    parser.add_argument(
        "--synthetic", action="store_true", help="Beauty-sized synthetic events (dynamics)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--note", default="", help="free text added under the table (dynamics)")
    parser.add_argument(
        "--transitions", action="store_true", help="add TransitionDynamics (dynamics case)"
    )
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
    if args.case == "dynamics":
        stem = "eval_speed_transitions" if args.transitions else "eval_speed_dynamics"
        out = args.out.with_name(f"{stem}_synthetic.md" if args.synthetic else f"{stem}.md")
        command = ".venv/bin/python -m benchmarks.eval_speed --case dynamics" + (
            " --synthetic" if args.synthetic else ""
        )
        command += " --transitions" if args.transitions else ""
        if args.threads:
            torch.set_num_threads(args.threads)
            command += f" --threads {args.threads}"
        if args.repeats != 3:
            command += f" --repeats {args.repeats}"
        start = os.getloadavg()[0]
        results = [
            run_dynamics(args.batch, args.repeats, args.synthetic, protocol, args.transitions)
            for protocol in ("loo", "temporal")
        ]
        write_dynamics(results, out, command, (start, os.getloadavg()[0]), args.note)
        return
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
