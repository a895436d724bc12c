"""Seconds and peak memory of `mmrec prepare` on Beauty 2014 and a generated 10M-interaction file.

Run from the project root:

    # both cases, writes benchmarks/results/data_prepare.md
    .venv/bin/python benchmarks/data_prepare.py
    # a quicker look
    .venv/bin/python benchmarks/data_prepare.py --rows 1000000 --no-write

Each case runs in a fresh Python process, so the peak resident memory (``ru_maxrss``) is that
case's alone; polars allocates outside Python's heap, so RSS (not tracemalloc) is the measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"beauty2014": (3.0, None), "synthetic": (60.0, 4.0)}  # seconds, GiB


def generate(path: Path, rows: int, seed: int = 0) -> Path:
    """A tabular csv with ``rows`` interactions: string user/item ids, Zipf item popularity,
    unix-second timestamps over two years and 1-5 ratings (about 20 events per user)."""
    import numpy as np
    import polars as pl

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    users = max(1, rows // 20)
    items = max(1, rows // 100)
    item = np.minimum(rng.zipf(1.3, rows), items) - 1
    item = rng.permutation(items)[item]
    frame = pl.DataFrame(
        {
            "user": rng.integers(0, users, rows),
            "item": item,
            "ts": 1_600_000_000 + rng.integers(0, 2 * 365 * 86400, rows),
            "stars": rng.integers(1, 6, rows),
        }
    ).select(
        pl.format("U{}", "user").alias("user_id"),
        pl.format("I{}", "item").alias("item_id"),
        "ts",
        "stars",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.write_csv(tmp)
    os.replace(tmp, path)
    return path


def run_case(case: str, work: Path, rows: int, beauty: Path) -> dict:
    """Runs one case in this process and returns its numbers (called in a child process)."""
    from mmrec.data.prepare import PrepareConfig, prepare_dataset

    if case == "beauty2014":
        cfg = PrepareConfig(
            source="tabular",
            reviews=str(beauty / "interactions.tsv"),
            kcore=0,
            columns={"user_id": "reviewerID", "item_id": "asin", "timestamp": "timestamp"},
            item_text=str(beauty / "item_title_keywords.txt"),
            out=str(work / "beauty2014"),
        )
    else:
        cfg = PrepareConfig(
            source="tabular",
            reviews=str(work / f"synthetic_{rows}.csv"),
            kcore=5,
            columns={
                "user_id": "user_id",
                "item_id": "item_id",
                "timestamp": "ts",
                "rating": "stars",
            },
            out=str(work / f"synthetic_{rows}"),
        )
    cfg.overwrite = True
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    out = prepare_dataset(cfg, progress=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    meta = json.loads((out / "meta.json").read_text())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "case": case,
        "input_rows": meta["input_rows"],
        "interactions": meta["num_interactions"],
        "users": meta["num_users"],
        "items": meta["num_items"],
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "peak_rss_gib": round(peak_gib, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="interactions in the synthetic file"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/mmrec_bench"), help="scratch folder"
    )
    parser.add_argument(
        "--beauty", type=Path, default=REPO.parent / "shared" / "data" / "amazon2014-beauty"
    )
    parser.add_argument(
        "--cases", nargs="+", default=["beauty2014", "synthetic"], choices=list(TARGETS)
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not write benchmarks/results/data_prepare.md"
    )
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.work, args.rows, args.beauty)))
        return 0
    results = []
    for case in args.cases:
        if case == "beauty2014" and not (args.beauty / "interactions.tsv").exists():
            print(f"skipping beauty2014: {args.beauty} not found")
            continue
        if case == "synthetic":
            t0 = time.perf_counter()
            generate(args.work / f"synthetic_{args.rows}.csv", args.rows)
            print(f"synthetic file ready in {time.perf_counter() - t0:.1f}s")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--run-case",
                case,
                "--rows",
                str(args.rows),
                "--work",
                str(args.work),
                "--beauty",
                str(args.beauty),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result["process_seconds"] = round(time.perf_counter() - start, 2)
        result["load"] = max(load, os.getloadavg()[0])
        results.append(result)
    header = (
        "| case | input rows | interactions | users | items | prepare s | prepare CPU s "
        "| process s | peak RSS GiB | target |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        secs, gib = TARGETS[r["case"]]
        target = f"< {secs:g} s" + (f", < {gib:g} GiB" if gib else "")
        ok = r["seconds"] < secs and (gib is None or r["peak_rss_gib"] < gib)
        lines.append(
            f"| {r['case']} | {r['input_rows']:,} | {r['interactions']:,} | {r['users']:,} "
            f"| {r['items']:,} | {r['seconds']} | {r['cpu_seconds']} | {r['process_seconds']} "
            f"| {r['peak_rss_gib']} | {target} {'ok' if ok else 'MISSED'} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        import polars as pl

        command = "python benchmarks/data_prepare.py " + " ".join(sys.argv[1:])
        text = (
            "# `mmrec prepare` speed and memory\n\n"
            f"Command: `{command.strip()}` (from the project root)\n\n"
            f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, polars {pl.__version__}.\n"
            "`prepare s`: the prepare_dataset call (read, clean, k-core, ids, split, items, "
            "parquet, trend report, meta.json); `process s`: the whole child process including "
            "imports; peak RSS: ru_maxrss of that process. Load average (1 min) while it ran: "
            + ", ".join(f"{r['case']} {r['load']:.1f}" for r in results)
            + (
                " (other jobs shared the 2 cores, so wall seconds are inflated; "
                "CPU seconds are not).\n\n"
            )
            + table
            + "\n"
        )
        out = REPO / "benchmarks" / "results" / "data_prepare.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
