"""W&B runs of `mmrec experiment` and `mmrec tune`: one per fit and per test, grouped."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import Callback


class WandbRun(Callback):
    """What the W&B run of one Lightning command names: its group and config. Passed among
    the callbacks of :func:`mmrec.cli.run_lightning`, where the command's W&B logger reads it
    (it does nothing during training).

    Args:
        group: The W&B group (the experiment's or study's name).
        config: Added to the run's W&B config (variant, seed, run key; study, trial).
    """

    def __init__(self, group: str, config: dict[str, Any]) -> None:
        self.group, self.config = group, config


def finish_wandb() -> None:
    """Finish the current W&B run, if any, so the next logger starts its own."""
    wandb = sys.modules.get("wandb")  # not imported: no run was started
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def run_tracked(argv: list[str], group: str, config: dict[str, Any], callbacks: list | tuple = ()):
    """:func:`mmrec.cli.run_lightning` as a W&B run of its own (in ``group``, with ``config``),
    finished when the command ends or fails; returns the CLI object."""
    from mmrec.cli import run_lightning

    try:
        return run_lightning(argv, callbacks=[WandbRun(group, config), *callbacks])
    finally:
        finish_wandb()
