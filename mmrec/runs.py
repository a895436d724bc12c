"""Run folders (one per fit, shared by its test and predict) and what a run prints."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.swa_utils import get_ema_avg_fn

RUN_ID_ENV = "MMREC_RUN_ID"
"""Environment variable that fixes the run id (set it when launching DDP with torchrun or
SLURM yourself, so that every process writes into the same run folder)."""


def new_run_id(root: Path) -> str:
    """A run id every process of one launch agrees on.

    ``MMREC_RUN_ID`` if set; else the job id of a SLURM or torchrun launch; else the current
    time (``YYYYmmdd-HHMMSS``, made unique under ``root``), exported to ``MMREC_RUN_ID`` so
    that processes Lightning starts later (DDP) inherit it.
    """
    for key in (RUN_ID_ENV, "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(key, "")
        if value and value != "none":
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", value)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id, n = stamp, 1
    while (root / run_id).exists():
        n += 1
        run_id = f"{stamp}-{n}"
    os.environ[RUN_ID_ENV] = run_id
    return run_id


@dataclass(frozen=True)
class Run:
    """Where one run of ``mmrec <command>`` writes.

    ``runs/<name>/<run id>/``: ``checkpoints/`` (``best.ckpt``, ``last.ckpt``) and one folder
    per command (``fit/``, ``test/``, ``predict/``...) for its logs, config and outputs.
    ``runs/<name>/latest`` links to the newest fit.

    Attributes:
        name: The run name (``--name``).
        folder: ``<root>/<name>/<run id>``.
        command: The subcommand (``fit``, ``test``...).
    """

    name: str
    folder: Path
    command: str

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def logs(self) -> Path:
        """This command's folder: metrics.csv, config.yaml, test_slices.csv, predictions."""
        return self.folder / self.command


def latest_link(root: Path, name: str) -> Path:
    """``<root>/<name>/latest``: the newest fit of this run name."""
    return root / name / "latest"


def resolve_ckpt(ckpt_path: str | None, root: Path, name: str) -> str | None:
    """``best``/``last`` mean that checkpoint of the newest fit of ``name``; paths stay."""
    if ckpt_path in ("best", "last"):
        path = latest_link(root, name) / "checkpoints" / f"{ckpt_path}.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"--ckpt_path {ckpt_path}: no {path} (no finished fit named {name!r} under "
                f"{root}); run `mmrec fit` with this config first, or give a checkpoint file"
            )
        return str(path.resolve())
    return ckpt_path


def run_for(command: str, root: Path, name: str, ckpt_path: str | None) -> Run:
    """The run folder of a command: a new one for ``fit`` (unless resuming from a checkpoint
    of a run folder), the checkpoint's own run folder for ``test``/``validate``/``predict``."""
    if ckpt_path:
        ckpt = Path(ckpt_path).resolve()
        if ckpt.parent.name == "checkpoints":
            return Run(name, ckpt.parent.parent, command)
    base = root / name
    return Run(name, base / new_run_id(base), command)


def mark_latest(run: Run) -> None:
    """Point ``<root>/<name>/latest`` at ``run`` (a relative symlink)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    link = run.folder.parent / "latest"
    tmp = link.with_name(f".latest.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.folder.name, target_is_directory=True)
    os.replace(tmp, link)


class EpochSummary(Callback):
    """Prints one line per epoch: training loss and the validation metrics.

    Args:
        keys: Metrics to show, in order, when logged (others are left out).
    """

    def __init__(
        self,
        keys: tuple[str, ...] = ("train/loss_epoch", "val/ndcg@10", "val/hr@10", "val/mrr"),
    ) -> None:
        self.keys = keys

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the validation loop before this hook, so val/* are this epoch's
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = [f"{k} {float(metrics[k]):.4f}" for k in self.keys if k in metrics]
        if shown:
            _print(trainer, f"epoch {trainer.current_epoch}: " + ", ".join(shown))


def _print(trainer: L.Trainer, text: str) -> None:
    bar = trainer.progress_bar_callback
    if bar is not None and hasattr(bar, "print"):
        bar.print(text)
    else:
        print(text, flush=True)


def best_checkpoint_summary(callback: Any) -> str | None:
    """``best val/ndcg@10 0.0612 at epoch 7: runs/.../best.ckpt`` for a ModelCheckpoint."""
    path = getattr(callback, "best_model_path", "")
    score = getattr(callback, "best_model_score", None)
    if not path or score is None:
        return None
    import torch

    epoch = torch.load(path, map_location="cpu", weights_only=True).get("epoch")
    return f"best {callback.monitor} {float(score):.4f} at epoch {epoch}: {path}"


class RandomState(Callback):
    """Saves the random number generators in checkpoints and restores them on resume.

    Lightning checkpoints hold the weights, optimiser and loop state but not the global
    generators of torch (dropout, the DataLoader's base seed), CUDA, numpy and Python. This
    callback stores them when a checkpoint is written and puts them back when training
    starts from one (after Lightning's sanity check, which runs with isolated generators), so
    a fit resumed from an epoch-boundary checkpoint continues exactly as the uninterrupted
    fit would have: same batches (the samplers are seeded by epoch), same dropout masks.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loaded is None:
            return
        import random

        import numpy as np
        import torch

        state, self._loaded = self._loaded, None
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class EMAWeights(EMAWeightAveraging):
    """Exponential moving average of the weights (Lightning's ``EMAWeightAveraging``), for
    mmrec models: validation, checkpoints (``state_dict``) and so ``test --ckpt_path best``
    use the averaged weights; the raw ones are kept in the checkpoint for resuming.

    Two differences from Lightning's callback, both needed by mmrec models:

    - Lightning builds its averaged copy in the callback's ``setup``, before the module's own
      ``setup`` has sized the buffers that depend on the data (item counts); this callback
      runs the module's ``setup`` first (it is idempotent) so both copies have equal shapes.
    - Only parameters are averaged. mmrec's buffers (cached features, attribute codes, time
      frequencies) are constants, and an average of equal floats is not always bit-equal to
      them (``0.998 * b + 0.002 * b``): timestamp frequencies would drift.

    The decay is per optimizer step, while early stopping counts epochs: on a small category
    (one or two steps per epoch) a 0.998 average would span ~500 epochs and validation would
    read weights near the initial ones until early stopping ends the run. So the average's
    horizon, ``1 / (1 - decay)`` steps, is capped at ``max_horizon_epochs`` epochs: at fit start
    the decay becomes ``min(decay, 1 - 1 / (max_horizon_epochs * steps_per_epoch))``, and a line
    says so when the cap lowers it. At the default (12 epochs) the cap leaves decays up to
    0.999 untouched from 88 steps per epoch on (Beauty 2014 at batch 256); it lowers 0.998 to
    0.917 on one step per epoch.

    Args:
        decay: Weight of the old average at each optimizer step (0.998: a horizon of ~500
            steps, about 6 epochs of Beauty 2014 at batch 256).
        update_starting_at_step: First step that updates the average (None: from the start).
        max_horizon_epochs: Longest horizon of the average, in epochs (None: no cap, the
            decay is used as given whatever the number of steps per epoch).
    """

    def __init__(
        self,
        decay: float = 0.998,
        update_starting_at_step: int | None = None,
        max_horizon_epochs: float | None = 12.0,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMAWeights: decay must be within [0, 1), got {decay}")
        if max_horizon_epochs is not None and not max_horizon_epochs > 0:
            raise ValueError(
                f"EMAWeights: max_horizon_epochs must be positive (or None for no cap), "
                f"got {max_horizon_epochs}"
            )
        super().__init__(
            use_buffers=False, decay=decay, update_starting_at_step=update_starting_at_step
        )
        self.decay = decay
        self.max_horizon_epochs = max_horizon_epochs

    @staticmethod
    def capped_decay(
        decay: float, steps_per_epoch: float, max_horizon_epochs: float | None
    ) -> float:
        """``decay``, lowered where its horizon of ``1 / (1 - decay)`` steps would span more
        than ``max_horizon_epochs`` epochs of ``steps_per_epoch`` steps (unchanged when either
        is None, or the steps per epoch are unknown)."""
        if max_horizon_epochs is None or not steps_per_epoch or steps_per_epoch == float("inf"):
            return decay
        cap = max(0.0, 1.0 - 1.0 / (max_horizon_epochs * steps_per_epoch))
        return decay if decay <= cap else cap

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.setup(stage)
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        batches = trainer.num_training_batches
        known = batches != float("inf")
        steps = math.ceil(batches / trainer.accumulate_grad_batches) if known else 0
        decay = self.capped_decay(self.decay, steps, self.max_horizon_epochs)
        if decay != self.decay and self._average_model is not None:
            self._average_model.avg_fn = get_ema_avg_fn(decay)
            rank_zero_info(
                f"EMAWeights: {steps} optimizer step(s) per epoch, so decay {self.decay} would "
                f"average over ~{1 / (1 - self.decay) / steps:.0f} epochs; capped at "
                f"{self.max_horizon_epochs:g} epochs: decay {decay:.4f}"
            )


class DecayOnPlateau(Callback):
    """Multiply the learning rate by ``factor`` whenever the monitored validation metric has
    not improved for ``patience`` validations in a row, down to ``min_ratio`` times the
    starting learning rate: one schedule rule for models that train for 20 or for 80 epochs,
    where a cosine needs each model's length. Composes with ``model.warmup_steps`` and
    ``model.lr_min_ratio`` (their scheduler's base rates are scaled too). Its state is saved in
    checkpoints, so a resumed fit goes on with the same rate.

    Use: ``--trainer.callbacks+=mmrec.runs.DecayOnPlateau --trainer.callbacks.patience=3``.

    Args:
        monitor: Validation metric to watch (logged by the module).
        mode: ``max`` (ranking metrics) or ``min`` (losses).
        factor: Multiplier in (0, 1) applied at each plateau.
        patience: Validations without improvement before the rate is lowered; it must be
            below early stopping's patience, or training stops first.
        min_ratio: Floor of the rate, as a fraction of the starting rate.
        min_delta: Least change that counts as an improvement.
    """

    def __init__(
        self,
        monitor: str = "val/ndcg@10",
        mode: str = "max",
        factor: float = 0.3,
        patience: int = 3,
        min_ratio: float = 0.01,
        min_delta: float = 0.0,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"DecayOnPlateau: mode must be 'max' or 'min', got {mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"DecayOnPlateau: factor must be within (0, 1), got {factor}")
        if patience < 1:
            raise ValueError(f"DecayOnPlateau: patience must be at least 1, got {patience}")
        if not 0 < min_ratio <= 1:
            raise ValueError(f"DecayOnPlateau: min_ratio must be within (0, 1], got {min_ratio}")
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, factor, patience
        self.min_ratio, self.min_delta = min_ratio, min_delta
        self.best: float | None = None
        self.wait = 0
        self.scale = 1.0  # current rate / starting rate

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"DecayOnPlateau: no metric {self.monitor!r} was logged; logged: "
                f"{sorted(trainer.callback_metrics)}"
            )
        value = float(value)
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait < self.patience or self.scale <= self.min_ratio:
            return
        new_scale = max(self.scale * self.factor, self.min_ratio)
        step = new_scale / self.scale
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= step
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = [lr * step for lr in config.scheduler.base_lrs]
        self.scale, self.wait = new_scale, 0
        _print(
            trainer,
            f"DecayOnPlateau: {self.monitor} has not improved on {self.best:.4f} for "
            f"{self.patience} validations; learning rate x{self.factor} "
            f"(now {new_scale:g} of the starting rate)",
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "scale": self.scale}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.wait = state_dict["best"], state_dict["wait"]
        self.scale = state_dict["scale"]


class EpochLogInterval(Callback):
    """Caps ``Trainer(log_every_n_steps)`` at the optimizer steps of one epoch, so the step
    metrics (``train/loss_step``) are logged at least once an epoch: on small categories (one
    or two steps an epoch against the default interval of 50) they would otherwise appear
    every 25 to 50 epochs. Larger data keeps the interval as set; 0 (no logging) stays 0.

    Lightning warns about an interval longer than an epoch before any callback can act; the
    ``mmrec`` command, which adds this callback to every fit, silences that warning.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        if not batches or batches == float("inf"):
            return
        steps = math.ceil(batches / trainer.accumulate_grad_batches)
        if 0 < steps < trainer.log_every_n_steps:
            trainer.log_every_n_steps = steps
