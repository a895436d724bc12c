"""W&B runs of `mmrec experiment` and `mmrec tune`: one per fit and per test, grouped."""

from __future__ import annotations

from typing import Any

from mmrec.callbacks import WandbRun
from mmrec.lightning_cli import finish_wandb

__all__ = ["WandbRun", "finish_wandb", "run_tracked"]


def run_tracked(argv: list[str], group: str, config: dict[str, Any], callbacks: list | tuple = ()):
    """:func:`mmrec.lightning_cli.run_lightning` as a W&B run of its own (in ``group``, with
    ``config``), finished when the command ends or fails; returns the CLI object."""
    from mmrec.lightning_cli import run_lightning

    try:
        return run_lightning(argv, callbacks=[WandbRun(group, config), *callbacks])
    finally:
        finish_wandb()
