"""Seconds and peak memory of `mmrec prepare` on raw files in each release's real format, against
polars' own streaming scan of the same file's four narrow columns, measured in the same run.

Run from the project root (the 20M rows write ~2.5 GB gz per file into --work and take a while
on 2 cores; files are deleted after each case unless --keep):

    .venv/bin/python benchmarks/data_prepare.py --sizes 2000000 20000000
    # a quicker look, no results file
    .venv/bin/python benchmarks/data_prepare.py --sizes 200000 --no-write

Each case: ``mmrec.synthetic.raw.write_raw_files`` writes a review file and a metadata file
(seeded; real fields, HTML debris, missing fields, duplicates, a few broken lines, several records
for one ASIN, invalid UTF-8); the floor is ``pl.scan_ndjson(...).select(4 columns).collect(
engine="streaming")`` run before and after the prepare (the faster run counts) on the twin file
that has the broken lines whole (polars' scan stops at a broken line; every other byte is the
same); the prepare is the ``mmrec prepare`` command itself (defaults: 5-core, leave-one-out, the
trend report). Every process's wall time and peak RSS come from ``/usr/bin/time`` (``%e``,
``%M``: its own ``ru_maxrss``), never an estimate. With ``--setup``,
``AmazonDataModule.setup()`` on the largest prepared folder is measured too (time, peak RSS of
the process and its growth during setup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NARROW = {
    "amazon2014": ("reviewerID", "asin", "unixReviewTime", "overall"),
    "amazon2018": ("reviewerID", "asin", "unixReviewTime", "overall"),
    "amazon2023": ("user_id", "parent_asin", "timestamp", "rating"),
}
FLOOR = """
import sys, polars as pl
keys = sys.argv[2].split(",")
schema = {k: pl.String for k in keys[:2]} | {keys[2]: pl.Int64, keys[3]: pl.Float64}
frame = pl.scan_ndjson(sys.argv[1], schema=schema).select(keys).collect(engine="streaming")
print(frame.height)
"""
SETUP = """
import json, resource, sys, time
from mmrec.data.datamodule import AmazonDataModule
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dm = AmazonDataModule(sys.argv[1], max_len=50)
start = time.perf_counter()
dm.setup()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "rss_before_gib": before / 2**20, "peak_gib": peak / 2**20,
                  "train_rows": len(dm.datasets["train"]), "test_rows": len(dm.datasets["test"])}))
"""


def run(cmd: list[str]) -> dict:
    """Runs ``cmd`` under ``/usr/bin/time``: its wall seconds, peak RSS in GiB (``%M``: the
    command's own ``ru_maxrss``, nothing of this process) and its output."""
    timed = ["/usr/bin/time", "-f", "TIME %e %M", *cmd]
    proc = subprocess.run(timed, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    last = next(ln for ln in reversed(proc.stderr.splitlines()) if ln.startswith("TIME "))
    seconds, kib = last.split()[1:]
    return {
        "seconds": float(seconds),
        "peak_gib": int(kib) / 2**20,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


GENERATE = """
import sys
from pathlib import Path
from mmrec.synthetic.raw import write_raw_files
folder, release, rows = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
write_raw_files(folder / "raw", release, rows, seed=0)
write_raw_files(folder / "twin", release, rows, seed=0, broken=False, meta=False)
"""


def case(release: str, rows: int, work: Path, keep: bool, setup: bool) -> dict:
    """Generates, measures the floor and the prepare (and optionally the datamodule setup)."""
    folder = work / f"{release}_{rows}"
    start = time.perf_counter()
    # in a child process: this one stays small, it starts the measured commands
    subprocess.run([sys.executable, "-c", GENERATE, str(folder), release, str(rows)], check=True)
    print(f"{release} {rows:,}: files written in {time.perf_counter() - start:.0f}s", flush=True)
    raw_reviews, raw_meta = sorted(
        (folder / "raw").iterdir(), key=lambda p: p.name.startswith("meta")
    )
    twin_reviews = next((folder / "twin").iterdir())
    floor_cmd = [sys.executable, "-c", FLOOR, str(twin_reviews), ",".join(NARROW[release])]
    out = folder / "prepared"
    prepare_cmd = [
        str(Path(sys.executable).with_name("mmrec")),
        "prepare",
        "--source",
        release,
        "--reviews",
        str(raw_reviews),
        "--meta",
        str(raw_meta),
        "--out",
        str(out),
        "--progress",
        "false",
    ]
    load = os.getloadavg()[0]
    floors = [run(floor_cmd)]
    prepared = run(prepare_cmd)
    floors.append(run(floor_cmd))
    load = max(load, os.getloadavg()[0])
    floor = min(floors, key=lambda r: r["seconds"])
    meta = json.loads((out / "meta.json").read_text())
    result = {
        "release": release,
        "lines": rows,
        "reviews_gz_mb": raw_reviews.stat().st_size / 1e6,
        "meta_gz_mb": raw_meta.stat().st_size / 1e6,
        "floor_s": floor["seconds"],
        "floor_gib": max(r["peak_gib"] for r in floors),
        "prepare_s": prepared["seconds"],
        "prepare_gib": prepared["peak_gib"],
        "interactions": meta["num_interactions"],
        "users": meta["num_users"],
        "items": meta["num_items"],
        "dropped": meta["dropped"],
        "item_fields": meta.get("item_fields"),
        "meta_duplicate_records": meta.get("meta_duplicate_records"),
        "load": load,
        "log": prepared["stdout"].strip().splitlines()[-2:],
    }
    print(json.dumps(result, indent=1), flush=True)
    if setup:  # the 5-core folder, and every event of the file (no k-core, repeats kept)
        every = folder / "prepared_every_event"
        extra = ["--kcore", "0", "--keep_repeats", "true", "--report", "false", "--out"]
        run([*prepare_cmd[:-4], "--progress", "false", *extra, str(every)])
        result["setup"] = []
        for where in (out, every):
            measured = run([sys.executable, "-c", SETUP, str(where)])
            numbers = json.loads(measured["stdout"].strip().splitlines()[-1])
            meta = json.loads((where / "meta.json").read_text())
            numbers |= {
                "process_s": measured["seconds"],
                "process_peak_gib": measured["peak_gib"],
                "events": meta["num_interactions"],
                "users": meta["num_users"],
                "kcore": meta["kcore"],
            }
            result["setup"].append(numbers)
            print(json.dumps(numbers), flush=True)
    if not keep:
        shutil.rmtree(folder)
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| format | review lines | reviews gz MB | meta gz MB | floor s (scan 4 cols) | floor "
        "peak GiB | `mmrec prepare` s | prepare peak GiB | prepare / floor | kept "
        "interactions | users | items | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['release']} | {r['lines']:,} | {r['reviews_gz_mb']:.0f} | {r['meta_gz_mb']:.0f} "
            f"| {r['floor_s']:.2f} | {r['floor_gib']:.2f} | {r['prepare_s']:.2f} "
            f"| {r['prepare_gib']:.2f} | {r['prepare_s'] / r['floor_s']:.2f}x "
            f"| {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument(
        "--releases", nargs="+", default=["amazon2018", "amazon2023"], choices=list(NARROW)
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmrec_bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--setup", action="store_true", help="time AmazonDataModule.setup on the largest case"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/data_prepare.md")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in sorted(args.sizes):
        for release in args.releases:
            free = shutil.disk_usage(args.work).free / 1e9
            print(f"{free:.0f} GB free in {args.work}", flush=True)
            last = rows == max(args.sizes) and release == args.releases[-1]
            results.append(case(release, rows, args.work, args.keep, args.setup and last))
    text = table(results)
    print(text)
    if args.no_write:
        return 0
    import polars as pl

    command = "python benchmarks/data_prepare.py " + " ".join(sys.argv[1:])
    setups = [r for r in results if "setup" in r]
    notes = [
        "# `mmrec prepare` speed and memory on raw files of the official formats",
        "",
        f"Command: `{command.strip()}` (from the project root).",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()}, polars {pl.__version__}. Load: the 1-minute load "
        "average around each case (other jobs share the 2 cores: a load above 2 inflates the "
        "wall times).",
        "",
        "Floor: `pl.scan_ndjson(file, schema=...).select(user, item, time, rating)"
        '.collect(engine="streaming")` in its own process, before and after the prepare (the '
        "faster run), on the twin file whose few broken lines are whole (polars' scan stops at "
        "a broken line). `mmrec prepare`: the whole command in its own process (read, "
        "duplicates, repeats, 5-core, ids, leave-one-out split, parquet files, metadata of the "
        "kept items, trend report, meta.json). Times are wall seconds of the process; peak "
        "memory is its `ru_maxrss` (`/usr/bin/time -f %M`). Files: "
        "`mmrec.synthetic.raw` (seed 0).",
        "",
        table(results),
        "",
    ]
    for r in results:
        notes.append(
            f"- {r['release']} {r['lines']:,}: dropped {r['dropped']}; metadata "
            f"{r['item_fields']}, duplicate records {r['meta_duplicate_records']}."
        )
    for r in setups:
        notes += [
            "",
            f"`AmazonDataModule(max_len=50).setup()` on folders of the {r['release']} "
            f"{r['lines']:,}-line file (flat tensors, no per-user Python objects):",
            "",
        ]
        for s in r["setup"]:
            notes.append(
                f"- {s['events']:,} events, {s['users']:,} users (kcore {s['kcore']}): setup "
                f"{s['seconds']:.1f} s; process peak RSS {s['process_peak_gib']:.2f} GiB, of "
                f"which {s['rss_before_gib']:.2f} GiB before setup (imports: torch, lightning); "
                f"{s['train_rows']:,} training rows, {s['test_rows']:,} test rows."
            )
    args.out.write_text("\n".join(notes) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
