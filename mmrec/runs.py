"""Run folders (one per fit, shared by its test and predict) and the best checkpoint's line.

The callbacks that used to live here are in :mod:`mmrec.callbacks` (issue 38) and stay
importable from this module, so configs and checkpoints that name ``mmrec.runs.EMAWeights``
(or another of them) keep working."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mmrec.callbacks import (
    DecayOnPlateau,
    EMAWeights,
    EpochLogInterval,
    EpochSummary,
    RandomState,
)

__all__ = [
    "RUN_ID_ENV",
    "Run",
    "best_checkpoint_summary",
    "latest_link",
    "mark_latest",
    "new_run_id",
    "resolve_ckpt",
    "run_for",
    # callbacks, moved to mmrec.callbacks (old class paths such as mmrec.runs.EMAWeights)
    "DecayOnPlateau",
    "EMAWeights",
    "EpochLogInterval",
    "EpochSummary",
    "RandomState",
]

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


def best_checkpoint_summary(callback: Any) -> str | None:
    """``best val/ndcg@10 0.0612 at epoch 7: runs/.../best.ckpt`` for a ModelCheckpoint."""
    path = getattr(callback, "best_model_path", "")
    score = getattr(callback, "best_model_score", None)
    if not path or score is None:
        return None
    import torch

    epoch = torch.load(path, map_location="cpu", weights_only=True).get("epoch")
    return f"best {callback.monitor} {float(score):.4f} at epoch {epoch}: {path}"
