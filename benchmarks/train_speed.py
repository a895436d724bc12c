"""Seconds per training epoch: mmrec (Lightning, the sasrec config) vs a plain PyTorch loop.

Both loops train the same model (built from configs/beauty2014/sasrec_v1.yaml through the CLI
parser, same initial weights) on the same DataLoader, with the same precision, gradient
clipping and optimizer; the plain loop has no Lightning. Validation and checkpointing are off
in both, so the numbers compare training epochs only. The first epoch of each is warm-up and
not counted.

    python -m benchmarks.train_speed --device cpu --epochs 3
    python -m benchmarks.train_speed --device cuda --epochs 4   # GPU
Writes (appends a section to) benchmarks/results/train_speed.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import REPO, hardware

CONFIG = REPO / "configs" / "beauty2014" / "sasrec.yaml"


class EpochTimer(L.Callback):
    """Wall time of every training epoch (device synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)


def build(data_dir: str, batch_size: int):
    """Model and datamodule exactly as `mmrec fit --config configs/beauty2014/sasrec_v1.yaml` builds
    them."""
    from mmrec.lightning_cli import _cli_class

    cli_cls, model_cls, data_cls, defaults = _cli_class()
    args = [
        f"--config={CONFIG}",
        f"--data.data_dir={data_dir}",
        f"--data.batch_size={batch_size}",
        "--trainer.logger=false",
    ]
    cli = cli_cls(
        model_cls,
        data_cls,
        args=args,
        run=False,
        trainer_defaults=defaults,
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )
    return cli.model, cli.datamodule, cli.trainer.precision


def plain_epochs(model, loader, device: torch.device, epochs: int, bf16: bool) -> list[float]:
    """The same training step without Lightning: autocast, backward, clip 1.0, AdamW."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=model.hparams.lr, fused=device.type == "cuda"
    )
    times = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                item_vecs = model.item_vectors()
                hidden = model.encode(batch, item_vecs)
                keep = batch["targets"] > 0
                loss = model.loss(hidden[keep], batch["targets"][keep], item_vecs)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir",
        default=str(REPO / "data" / "beauty2014"),
        help="prepared Beauty 2014 folder (mmrec prepare --config configs/data/beauty2014.yaml)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per loop; the first is warm-up"
    )
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_speed.md"))
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")

    model, dm, precision = build(args.data_dir, args.batch_size)
    bf16 = args.device == "cuda"
    initial = copy.deepcopy(model)
    dm.setup("fit")
    loader = dm.train_dataloader()
    steps = len(loader)

    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision="bf16-mixed" if bf16 else "32-true",
        max_epochs=args.epochs,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        logger=False,
        callbacks=[timer],
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    plain = plain_epochs(initial, loader, torch.device(args.device), args.epochs, bf16)

    mm = sum(timer.times[1:]) / max(len(timer.times) - 1, 1)
    pt = sum(plain[1:]) / max(len(plain) - 1, 1)
    name = hardware(args.device)
    row = (
        f"| {args.device} ({name}) | {'bf16-mixed' if bf16 else '32'} | {steps} | "
        f"{mm:.2f} | {pt:.2f} | {mm / pt:.2f}x |"
    )
    print(
        f"mmrec {mm:.3f} s/epoch, plain loop {pt:.3f} s/epoch, ratio {mm / pt:.2f} "
        f"(epochs mmrec {[round(t, 2) for t in timer.times]}, plain {[round(t, 2) for t in plain]})"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(
            "# Training speed: mmrec vs a plain PyTorch loop (Beauty 2014, sasrec config)\n\n"
            "Seconds per training epoch (mean over epochs after the first), same model, batches, "
            "precision,\n"
            "clipping and optimizer; validation off. Target: ratio <= 1.3.\n\n"
            "| device | precision | steps/epoch | mmrec s/epoch | plain s/epoch | ratio |\n"
            "|---|---|---|---|---|---|\n"
        )
    with out.open("a") as f:
        f.write(row + f"  <!-- {' '.join(sys.argv)} -->\n")
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
