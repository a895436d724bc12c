"""Time ablation: ID only vs ID + time vs ID + time + query time (full ranking, several seeds).

Trains the same GPT-2 model (the sasrec settings: d=64, 2 layers, 2 heads, max_len 50, full
softmax CE) three ways on a prepared dataset folder (default: Beauty 2014, leave-one-out) and
reports HR/NDCG@10/20 as mean ± std over seeds, overall and on the holiday-window slice (test
targets within 14 days before, or on, a gift event: Christmas, Valentine's Day, Mother's Day,
Father's Day, Black Friday, Cyber Monday; see mmrec.calendar.GIFT_EVENTS).

    mmrec prepare --config configs/data/beauty2014.yaml          # once: data/beauty2014
    python -m benchmarks.ablation                                # GPU: 3 seeds, early stopping
    python -m benchmarks.ablation --seeds 0 --max_epochs 1 --limit_train_batches 0.2  # CPU smoke
Writes benchmarks/results/ablation_time.md (with the command that made it).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping

from benchmarks.common import KS, REPO, evaluate, fit_best, fmt, rel, run_all, save_report
from mmrec.calendar import GIFT_EVENTS
from mmrec.data.datamodule import AmazonDataModule
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence

VARIANTS = {
    "ID only": lambda: [],
    "ID + time": lambda: [TimestampEncoder()],
    "ID + time + query time": lambda: [TimestampEncoder(), QueryTimeEncoder()],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO / "data" / "beauty2014"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max_epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10, help="early stopping on val NDCG@10")
    p.add_argument("--limit_train_batches", type=float, default=1.0)
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--max_len", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32 on CPU")
    p.add_argument("--window_days", type=int, default=14)
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
        help="runs in parallel processes, the CPU threads split between them",
    )
    p.add_argument("--note", default="", help="free text added under the table")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablation_time.md"))
    return p.parse_args(argv)


def run(variant: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    dm = AmazonDataModule(
        args.data_dir,
        max_len=args.max_len,
        batch_size=args.batch_size,
        seed=seed,
        bucket_window=args.bucket_window,
    )
    L.seed_everything(seed)
    model = MMRecModule.for_data(
        dm,
        d_model=args.d_model,
        event_encoders=VARIANTS[variant](),
        sequence=GPT2Sequence(n_layer=2, n_head=2, dropout=0.2),
        lr=args.lr,
    )
    early = EarlyStopping("val/ndcg@10", mode="max", patience=args.patience)
    seconds, _, epochs = fit_best(
        model, dm, args, early, limit_train_batches=args.limit_train_batches
    )
    dm.setup("test")
    out = evaluate(model, dm, args.window_days)
    out |= {"epochs": float(epochs), "train_s": seconds}
    print(
        f"{variant} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()), flush=True
    )
    return out


def write_table(
    results: dict[str, list[dict[str, float]]], args: argparse.Namespace, cmd: str
) -> str:
    first = next(iter(results.values()))[0]
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.machine()})"
    )
    cols = [f"{s}/{m}@{k}" for s in ("all", "holiday") for k in KS for m in ("hr", "ndcg")]
    lines = [
        "# Time ablation: ID only vs ID + time vs ID + time + query time",
        "",
        f"Command: `{cmd}`",
        "",
        f"Data: `{rel(args.data_dir)}` (leave-one-out, full-catalogue ranking, "
        "history items excluded); "
        f"{int(first['users'])} test users, {int(first['holiday_users'])} in the holiday-window "
        f"slice (target within {args.window_days} days before or on {', '.join(GIFT_EVENTS)}). "
        f"Model: GPT-2 d={args.d_model}, 2 layers, 2 heads, max_len {args.max_len}, full softmax "
        f"CE, lr {args.lr}, batch {args.batch_size} (bucket_window {args.bucket_window}), "
        "best val NDCG@10 checkpoint (patience "
        f"{args.patience}, max_epochs {args.max_epochs}, limit_train_batches "
        f"{args.limit_train_batches}). Seeds {args.seeds}; mean ± std (ddof 1). "
        f"Device: {device}; {args.jobs} run(s) in parallel.",
        "",
        "| variant | "
        + " | ".join(c.replace("/", " ").upper() for c in cols)
        + " | epochs | train s |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for variant, runs in results.items():
        cells = [fmt([r[c] for r in runs]) for c in cols]
        epochs = "/".join(str(int(r["epochs"])) for r in runs)
        secs = "/".join(f"{r['train_s']:.0f}" for r in runs)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {epochs} | {secs} |")
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (Path(args.data_dir) / "meta.json").exists():
        print(
            f"no dataset at {args.data_dir}: "
            "run `mmrec prepare --config configs/data/beauty2014.yaml`",
            file=sys.stderr,
        )
        return 1
    cmd = "python -m benchmarks.ablation " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = run_all(run, list(VARIANTS), args)
    text = write_table(results, args, cmd.strip())
    return save_report(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
