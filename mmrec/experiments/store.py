"""Stored results of experiment runs: one JSON (and one per-user parquet) per resolved config."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

#: Resolved-config keys that do not change a run's result (where it writes, what it prints).
VOLATILE = (
    "name",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "checkpoint.dirpath",
    "last_checkpoint.dirpath",
    "predict_writer",
    "epoch_summary",
    "data.num_workers",
    "data.prepare.out",
    "data.prepare.overwrite",
    "data.prepare.report",
    "data.prepare.download_dir",
    "model.trusted_modules",
    "ckpt_path",
    "weights_only",  # how `fit` would load a checkpoint it resumes from, saved in config.yaml
)

#: Options added after results were stored, with the value that trains what was trained before
#: they existed: at that value they are left out of the key, so stored runs keep their keys.
ADDED_LATER = {
    "data.prefix_samples": False,
}

#: The same for init arguments of callbacks (``trainer.callbacks`` entries), by class path.
#: ``EMAWeights.max_horizon_epochs`` at 12 leaves every decay up to 0.999 untouched from 84
#: steps per epoch on, so the Beauty 2014 runs stored before it existed (88 steps) keep their
#: keys. Stored EMA runs of smaller categories, which the cap does change, were removed from
#: the project's store and trained again (tuning.md, section 16).
ADDED_LATER_CALLBACK_ARGS = {
    ("mmrec.runs.EMAWeights", "max_horizon_epochs"): 12.0,
}


def _drop(config: dict, dotted: str, only_if: Any = ...) -> None:
    """Remove ``dotted`` from ``config`` (when its value is ``only_if``, where one is given)."""
    *parents, leaf = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict) and (only_if is ... or (leaf in node and node[leaf] == only_if)):
        node.pop(leaf, None)


def run_key(config: dict) -> str:
    """The key of a run: a hash of its resolved config without the :data:`VOLATILE` keys
    (nor the :data:`ADDED_LATER` ones at their old behaviour's value).

    Two runs with the same key train the same model on the same data with the same seed, so
    a stored result is reused whatever experiment, process or machine made it.
    """
    config = json.loads(json.dumps(config, default=str))  # a deep copy of plain data
    for dotted in VOLATILE:
        _drop(config, dotted)
    for dotted, value in ADDED_LATER.items():
        _drop(config, dotted, only_if=value)
    callbacks = (config.get("trainer") or {}).get("callbacks") if isinstance(config, dict) else None
    for callback in callbacks if isinstance(callbacks, list) else []:
        init_args = callback.get("init_args") if isinstance(callback, dict) else None
        if not isinstance(init_args, dict):
            continue
        for (class_path, arg), value in ADDED_LATER_CALLBACK_ARGS.items():
            if callback.get("class_path") == class_path and init_args.get(arg, ...) == value:
                init_args.pop(arg)
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultStore:
    """A folder of results: ``<key>.json`` (metrics, settings, timing) and
    ``<key>.users.parquet`` (per-user test metrics, for paired tests).

    Copy the files of another store into this folder to assemble results made elsewhere.

    Args:
        folder: The store's folder (created on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, key: str) -> dict | None:
        """The stored record of ``key``, or None."""
        path = self.folder / f"{key}.json"
        if not path.is_file() or not (self.folder / f"{key}.users.parquet").is_file():
            return None
        return json.loads(path.read_text())

    def per_user(self, key: str) -> pl.DataFrame:
        """The per-user test metrics stored with ``key``."""
        return pl.read_parquet(self.folder / f"{key}.users.parquet")

    def put(self, key: str, record: dict, per_user: pl.DataFrame) -> None:
        """Store a run's record and per-user table (atomically: the JSON is written last)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        users = self.folder / f"{key}.users.parquet"
        per_user.write_parquet(users.with_suffix(".tmp"))
        os.replace(users.with_suffix(".tmp"), users)
        tmp = self.folder / f"{key}.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
        os.replace(tmp, self.folder / f"{key}.json")
