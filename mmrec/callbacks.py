"""Lightning callbacks of mmrec: the epoch summary line, random state in checkpoints, EMA of
the weights, learning-rate decay on plateaus, the step-logging interval, and the W&B run's
names."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.swa_utils import get_ema_avg_fn


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

    Use: ``--trainer.callbacks+=mmrec.callbacks.DecayOnPlateau --trainer.callbacks.patience=3``.

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


class WandbRun(Callback):
    """What the W&B run of one Lightning command names: its group and config. Passed among
    the callbacks of :func:`mmrec.lightning_cli.run_lightning`, where the command's W&B logger
    reads it (it does nothing during training).

    Args:
        group: The W&B group (the experiment's or study's name).
        config: Added to the run's W&B config (variant, seed, run key; study, trial).
    """

    def __init__(self, group: str, config: dict[str, Any]) -> None:
        self.group, self.config = group, config
