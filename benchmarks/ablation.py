"""Time ablation: ID only vs ID + time vs ID + time + query time (full ranking, several seeds).

Trains the same GPT-2 model (the sasrec settings: d=64, 2 layers, 2 heads, max_len 50, full
softmax CE) three ways on a prepared dataset folder (default: Beauty 2014, leave-one-out) and
reports HR/NDCG@10/20 as mean ± std over seeds, overall and on the holiday-window slice (test
targets within 14 days before, or on, a gift event: Christmas, Valentine's Day, Mother's Day,
Father's Day, Black Friday, Cyber Monday; see mmrec.calendar.GIFT_EVENTS).

    mmrec prepare --config configs/data/beauty2014.yaml          # once: data/beauty2014
    python benchmarks/ablation.py                                # GPU: 3 seeds, early stopping
    python benchmarks/ablation.py --seeds 0 --max_epochs 1 --limit_train_batches 0.2  # CPU smoke
Writes benchmarks/results/ablation_time.md (with the command that made it).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from mmrec.calendar import GIFT_EVENTS, in_event_window
from mmrec.data.datamodule import AmazonDataModule
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
from mmrec.evaluation import rank_targets
from mmrec.evaluation.metrics import RankingMetrics
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "ID only": lambda: [],
    "ID + time": lambda: [TimestampEncoder()],
    "ID + time + query time": lambda: [TimestampEncoder(), QueryTimeEncoder()],
}
KS = (10, 20)


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
    p.add_argument("--bucket_window", type=int, default=1,
                   help="AmazonDataModule.bucket_window (1: plain shuffled batches)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs in parallel processes, the CPU threads split between them")
    p.add_argument("--note", default="", help="free text added under the table")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablation_time.md"))
    return p.parse_args(argv)


def evaluate(model: MMRecModule, dm: AmazonDataModule, window_days: int) -> dict[str, float]:
    """Full-catalogue test metrics (RankingMetrics, every target of a row), overall and on the
    holiday-window slice (rows whose first target falls in a gift-event window)."""
    model.eval()
    metrics = {"all": RankingMetrics(ks=KS), "holiday": RankingMetrics(ks=KS)}
    users = holiday = 0
    with torch.no_grad():
        item_vecs = model.item_vectors().float()
        for batch in dm.test_dataloader():
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.autocast(model.device.type, enabled=model.device.type == "cuda"):
                user = model(batch)
            r = rank_targets(user.float(), item_vecs, batch["target_items"], batch["exclude_items"]).cpu()
            when = batch["target_time"].cpu().numpy()
            window = torch.from_numpy(in_event_window(when, GIFT_EVENTS, days_before=window_days))
            metrics["all"].update(r)
            if window.any():
                metrics["holiday"].update(r[window])
            users, holiday = users + len(r), holiday + int(window.sum())
    out = {"users": float(users), "holiday_users": float(holiday)}
    for name, m in metrics.items():
        out |= {f"{name}/{k}": float(v) for k, v in m.compute().items()}
    return out


class EpochLog(Callback):
    """Prints one line per validation: epoch, val NDCG@10, seconds since fit start (the scripts
    run without progress bars, often several at once; this is what their logs show)."""

    def __init__(self, tag: str = "") -> None:
        self.tag, self.t0 = tag, time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # (callbacks' on_validation_epoch_end runs before the module logs this epoch's value)
        val = trainer.callback_metrics.get("val/ndcg@10")
        if val is not None and not trainer.sanity_checking:
            print(f"{self.tag}epoch {trainer.current_epoch + 1}: val/ndcg@10 {float(val):.4f} "
                  f"({time.perf_counter() - self.t0:.0f} s)", flush=True)


def fit_best(
    model: MMRecModule,
    dm: AmazonDataModule,
    args: argparse.Namespace,
    early_stopping: EarlyStopping,
    limit_train_batches: float = 1.0,
    tag: str = "",
) -> tuple[float, float | None, int]:
    """Train with early stopping on val NDCG@10, then load the best-val weights into ``model``.

    ``args`` supplies ``max_epochs``, ``accelerator`` and ``precision`` (None: bf16 on GPU,
    fp32 on CPU); ``tag`` prefixes the per-epoch progress lines. Returns (training seconds, best val NDCG@10 or None without a checkpoint, epochs run).
    """
    gpu = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor="val/ndcg@10", mode="max", save_weights_only=True)
        trainer = L.Trainer(
            max_epochs=args.max_epochs,
            limit_train_batches=limit_train_batches,
            accelerator=args.accelerator,
            devices=1,
            precision=args.precision or ("bf16-mixed" if gpu else "32-true"),
            gradient_clip_val=1.0,
            callbacks=[ckpt, early_stopping, EpochLog(tag)],
            logger=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
        )
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        seconds = time.perf_counter() - t0
        if not ckpt.best_model_path:
            return seconds, None, trainer.current_epoch
        state = torch.load(ckpt.best_model_path, map_location=model.device, weights_only=True)
        model.load_state_dict(state["state_dict"])
        return seconds, float(ckpt.best_model_score), trainer.current_epoch


def run(variant: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    dm = AmazonDataModule(
        args.data_dir, max_len=args.max_len, batch_size=args.batch_size, seed=seed,
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
    seconds, _, epochs = fit_best(model, dm, args, early, limit_train_batches=args.limit_train_batches)
    dm.setup("test")
    out = evaluate(model, dm, args.window_days)
    out |= {"epochs": float(epochs), "train_s": seconds}
    print(
        f"{variant} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()), flush=True
    )
    return out


def run_all(fn, variants: list[str], args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """``fn(variant, seed, args)`` for every variant and seed, in ``args.jobs`` processes.

    Several single-threaded runs use a small CPU better than one multi-threaded run (the
    model's matrices are small); results do not depend on ``jobs`` beyond float noise.
    """
    if args.jobs <= 1:
        return {v: [fn(v, seed, args) for seed in args.seeds] for v in variants}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // args.jobs)
    with ProcessPoolExecutor(
        args.jobs, mp_context=mp.get_context("spawn"), initializer=torch.set_num_threads, initargs=(threads,)
    ) as pool:
        futures = {(v, s): pool.submit(fn, v, s, args) for v in variants for s in args.seeds}
        return {v: [futures[v, s].result() for s in args.seeds] for v in variants}


def save_report(text: str, out: str) -> int:
    """Write a benchmark's markdown report to ``out`` (folders made), print it, return 0."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    return 0


def _fmt(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"


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
        f"Data: `{_rel(args.data_dir)}` (leave-one-out, full-catalogue ranking, history items excluded); "
        f"{int(first['users'])} test users, {int(first['holiday_users'])} in the holiday-window "
        f"slice (target within {args.window_days} days before or on {', '.join(GIFT_EVENTS)}). "
        f"Model: GPT-2 d={args.d_model}, 2 layers, 2 heads, max_len {args.max_len}, full softmax "
        f"CE, lr {args.lr}, batch {args.batch_size} (bucket_window {args.bucket_window}), best val NDCG@10 checkpoint (patience "
        f"{args.patience}, max_epochs {args.max_epochs}, limit_train_batches "
        f"{args.limit_train_batches}). Seeds {args.seeds}; mean ± std (ddof 1). Device: {device}; {args.jobs} run(s) in parallel.",
        "",
        "| variant | "
        + " | ".join(c.replace("/", " ").upper() for c in cols)
        + " | epochs | train s |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for variant, runs in results.items():
        cells = [_fmt([r[c] for r in runs]) for c in cols]
        epochs = "/".join(str(int(r["epochs"])) for r in runs)
        secs = "/".join(f"{r['train_s']:.0f}" for r in runs)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {epochs} | {secs} |")
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (Path(args.data_dir) / "meta.json").exists():
        print(
            f"no dataset at {args.data_dir}: run `mmrec prepare --config configs/data/beauty2014.yaml`",
            file=sys.stderr,
        )
        return 1
    cmd = "python benchmarks/ablation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = run_all(run, list(VARIANTS), args)
    text = write_table(results, args, cmd.strip())
    return save_report(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
