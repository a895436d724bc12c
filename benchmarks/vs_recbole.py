"""mmrec vs RecBole 1.2.1: SASRec on Beauty 2014, same model size, same machine, one run.

Both train SASRec-sized models (d=64, 2 layers, 2 heads, inner 256, max_len 50, full-softmax
cross-entropy; RecBole with dropout 0.2, Adam lr 1e-3 and the exact (erf) GELU, mmrec with its
config's values, which ``--mmrec_overrides 'model.lr=0.001 model.sequence.init_args.dropout=0.2
model.sequence.init_args.activation=gelu'`` sets to RecBole's for a like-for-like row) on the
Beauty 2014 benchmark split (leave-one-out,
full-catalogue ranking) and are measured the same way: seconds per training epoch (mean, the
first epoch included), seconds for one full-ranking evaluation of all validation users (median),
wall time from the start of training until validation NDCG@10 first reaches ``--target``
(evaluating after every epoch; evaluation time included), and test NDCG@10/HR@10 of the
best-validation model. RecBole does not exclude history items for sequential models, so mmrec
runs here with history exclusion off (``exclude_history: false``) for a like-for-like table.
mmrec uses its configs/beauty2014/sasrec_v1.yaml (batch 256, causal loss at every position of one
window per user); RecBole its defaults (batch 2048, one sample per prefix, i.e. ~7x more rows).

RecBole is an optional benchmark dependency and needs its own virtual environment (its 1.2.1
release needs numpy<2 and setuptools<81)::

    python -m venv .recbole-venv
    .recbole-venv/bin/pip install torch==2.14.1 "numpy<2" "setuptools<81" recbole==1.2.1
    mmrec prepare --config configs/data/beauty2014.yaml        # once: data/beauty2014
    python -m benchmarks.vs_recbole --recbole_python .recbole-venv/bin/python --device cpu
    python -m benchmarks.vs_recbole --recbole_python .recbole-venv/bin/python --device cuda

Appends a section to benchmarks/results/vs_recbole.md with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from benchmarks.common import REPO, hardware

CONFIG = REPO / "configs" / "beauty2014" / "sasrec.yaml"
TSV = REPO.parent / "shared" / "data" / "amazon2014-beauty" / "interactions.tsv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data_dir", default=str(REPO / "data" / "beauty2014"), help="prepared Beauty 2014 folder"
    )
    p.add_argument(
        "--tsv", default=str(TSV), help="the benchmark's interactions.tsv (RecBole's input)"
    )
    p.add_argument(
        "--recbole_python", default=None, help="python of RecBole's venv; omit to run mmrec only"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--target", type=float, default=0.05, help="validation NDCG@10 to time")
    p.add_argument(
        "--max_epochs", type=int, default=60, help="mmrec epoch cap (early stopping: 10)"
    )
    p.add_argument(
        "--recbole_epochs", type=int, default=60, help="RecBole epoch cap (early stopping: 10)"
    )
    p.add_argument(
        "--recbole_batch_sizes",
        type=int,
        nargs="+",
        default=[2048, 256],
        help="one RecBole row per training batch size: 2048 is its default, 256 its faster\n"
        "setting on this split (more steps per epoch); ratios are given against each",
    )
    p.add_argument(
        "--mmrec_overrides",
        nargs="*",
        default=[""],
        metavar="ARGS",
        help=(
            "one mmrec row per entry: CLI overrides without dashes, e.g. '' 'data.bucket_window=50'"
        ),
    )
    p.add_argument(
        "--stop_at_target",
        nargs="*",
        choices=["mmrec", "recbole"],
        default=None,
        help="stop these runs once the target is reached (no value: both); their test NDCG\n"
        "is then that of an early model. The others train until early stopping",
    )
    p.add_argument("--note", default="", help="free text added under the table")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vs_recbole.md"))
    return p.parse_args(argv)


class Clock(L.Callback):
    """Train-epoch and validation seconds, validation NDCG@10 per epoch, time to the target."""

    def __init__(self, target: float, stop_at_target: bool) -> None:
        self.target, self.stop_at_target = target, stop_at_target
        self.epoch_s: list[float] = []
        self.eval_s: list[float] = []
        self.curve: list[float] = []
        self.reached: tuple[int, float] | None = None

    def _now(self, module: L.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_fit_start(self, trainer, module) -> None:
        self.start = self._now(module)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t = self._now(module)
        self._val_in_epoch = 0.0

    def on_train_epoch_end(self, trainer, module) -> None:
        # Lightning runs validation inside the training epoch; its time is taken out here
        self.epoch_s.append(self._now(module) - self._t - self._val_in_epoch)

    def on_validation_start(self, trainer, module) -> None:
        self._v = self._now(module)

    def on_validation_end(self, trainer, module) -> None:  # after the module logged val/ndcg@10
        if trainer.sanity_checking:
            return
        now = self._now(module)
        self.eval_s.append(now - self._v)
        self._val_in_epoch = now - self._v
        score = float(trainer.callback_metrics["val/ndcg@10"])
        self.curve.append(score)
        if self.reached is None and score >= self.target:
            self.reached = (len(self.curve), now - self.start)
            if self.stop_at_target:
                trainer.should_stop = True


def _stops(args: argparse.Namespace, framework: str) -> bool:
    """Whether ``framework``'s run stops at the target (``--stop_at_target`` alone: both)."""
    return args.stop_at_target is not None and (
        not args.stop_at_target or framework in args.stop_at_target
    )


def run_mmrec(args: argparse.Namespace, overrides: str = "") -> dict:
    """mmrec's sasrec config through the CLI parser, history exclusion off, timed."""
    from mmrec.lightning_cli import _cli_class

    cli_cls, model_cls, data_cls, defaults = _cli_class()
    cli = cli_cls(
        model_cls,
        data_cls,
        run=False,
        trainer_defaults=defaults,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=[
            f"--config={CONFIG}",
            f"--data.data_dir={args.data_dir}",
            "--trainer.logger=false",
            "--data.exclude_history=false",
            "--model.exclude_history=false",
            "--model.test_slices=false",
            *(f"--{kv}" for kv in shlex.split(overrides)),
        ],
    )
    model, dm = cli.model, cli.datamodule
    clock = Clock(args.target, _stops(args, "mmrec"))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ModelCheckpoint(
            dirpath=tmp, monitor="val/ndcg@10", mode="max", save_weights_only=True
        )
        trainer = L.Trainer(
            max_epochs=args.max_epochs,
            accelerator=args.device,
            devices=1,
            precision="bf16-mixed" if args.device == "cuda" else "32-true",
            gradient_clip_val=1.0,
            callbacks=[clock, ckpt, EarlyStopping("val/ndcg@10", mode="max", patience=10)],
            logger=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
        )
        trainer.fit(model, datamodule=dm)
        fit_s = time.perf_counter() - clock.start
        test = trainer.test(model, datamodule=dm, ckpt_path=ckpt.best_model_path, verbose=False)[0]
    return {
        "framework": "mmrec (configs/beauty2014/sasrec_v1.yaml"
        + (f" {overrides}" if overrides else "")
        + ")",
        "train_rows": len(dm.datasets["train"]),
        "epoch_s": clock.epoch_s,
        "eval_s": clock.eval_s,
        "val_ndcg10": clock.curve,
        "reached": clock.reached,
        "fit_s": fit_s,
        "test": {"ndcg@10": test["test/ndcg@10"], "hit@10": test["test/hr@10"]},
        "threads": torch.get_num_threads(),
    }


def run_recbole(args: argparse.Namespace, batch_size: int) -> dict:
    script = REPO / "benchmarks" / "_recbole_sasrec.py"
    with tempfile.TemporaryDirectory() as work:
        cmd = [
            args.recbole_python,
            str(script),
            "--tsv",
            args.tsv,
            "--work",
            work,
            "--epochs",
            str(args.recbole_epochs),
            "--device",
            args.device,
            "--target",
            str(args.target),
            "--batch_size",
            str(batch_size),
        ]
        if _stops(args, "recbole"):
            cmd.append("--stop_at_target")
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"RecBole run failed (exit {done.returncode}); command: {shlex.join(cmd)}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["framework"] = f"RecBole 1.2.1 SASRec (batch {batch_size})"
    return result


def row(r: dict) -> list[str]:
    reached = (
        f"{r['reached'][1]:.0f} s (epoch {r['reached'][0]})"
        if r["reached"]
        else f"not reached in {len(r['val_ndcg10'])} epochs (> {r['fit_s']:.0f} s)"
    )
    return [
        r["framework"],
        f"{statistics.mean(r['epoch_s']):.1f}",
        f"{statistics.median(r['eval_s']):.2f}",
        reached,
        f"{max(r['val_ndcg10']):.4f}",
        f"{r['test']['ndcg@10']:.4f}",
        f"{r['test']['hit@10']:.4f}",
        str(len(r["epoch_s"])),
        f"{r['fit_s']:.0f}",
    ]


def ratio(a: dict, b: dict) -> list[str]:
    """How many times faster mmrec (``a``) is than RecBole (``b``)."""
    per_epoch = statistics.mean(b["epoch_s"]) / statistics.mean(a["epoch_s"])
    per_eval = statistics.median(b["eval_s"]) / statistics.median(a["eval_s"])
    if a["reached"] and b["reached"]:
        to_target = f"{b['reached'][1] / a['reached'][1]:.1f}x"
    elif a["reached"]:
        to_target = f"> {b['fit_s'] / a['reached'][1]:.1f}x (RecBole did not reach it)"
    else:
        to_target = "n/a (mmrec did not reach it)"
    return [f"{per_epoch:.1f}x", f"{per_eval:.1f}x", to_target]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    results = []
    for overrides in args.mmrec_overrides:
        results.append(run_mmrec(args, overrides))
        print(json.dumps(results[-1]), flush=True)
    mmrec_rows = list(results)
    recbole_rows = []
    for batch_size in args.recbole_batch_sizes if args.recbole_python else []:
        recbole_rows.append(run_recbole(args, batch_size))
        results.append(recbole_rows[-1])
        print(json.dumps(results[-1]), flush=True)
    device = hardware(args.device)
    cmd = "python -m benchmarks.vs_recbole " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"\n## {args.device}: {device}\n",
        f"Command: `{cmd}`\n",
        "| framework | s / train epoch | s / full eval | time to val NDCG@10 "
        f">= {args.target} | best val NDCG@10 | test NDCG@10 | test HR@10 | epochs | fit wall s |",
        "|---|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(row(r)) + " |" for r in results),
    ]
    for b in recbole_rows:
        for r in mmrec_rows:
            lines += [
                "",
                (
                    "{} faster than {} by: per epoch {}, per full evaluation {}, to the target {}."
                ).format(r["framework"], b["framework"], *ratio(r, b)),
            ]
    lines += ["", "Validation NDCG@10 per epoch:"]
    lines += [
        f"- {r['framework']}: " + ", ".join(f"{v:.4f}" for v in r["val_ndcg10"]) for r in results
    ]
    if args.note:
        lines += ["", args.note]
    out = Path(args.out)
    if not out.exists():
        out.write_text(
            "# mmrec vs RecBole 1.2.1 (SASRec, Beauty 2014, full ranking, history not excluded)\n\n"
            "See the docstring of benchmarks/vs_recbole.py for what is measured. "
            "Each run appends a section, so the last section per device is the current result.\n"
        )
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
