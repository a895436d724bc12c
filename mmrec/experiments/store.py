"""Stored results of experiment runs: one JSON (and one per-user parquet) per resolved config."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
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
    "data.prepare.allow_truncated": False,
    "data.eval_protocol": "one_shot",
    "data.prepare.test_end": None,
    "data.fit_on_valid": False,
    "model.dynamics": None,
}

#: The same for init arguments of callbacks (``trainer.callbacks`` entries), by class path.
#: ``EMAWeights.max_horizon_epochs`` at 12 leaves every decay up to 0.999 untouched from 84
#: steps per epoch on, so the Beauty 2014 runs stored before it existed (88 steps) keep their
#: keys. Stored EMA runs of smaller categories, which the cap does change, were removed from
#: the project's store and trained again (tuning.md, section 16).
ADDED_LATER_CALLBACK_ARGS = {
    ("mmrec.runs.EMAWeights", "max_horizon_epochs"): 12.0,
}


#: The same for init arguments of the components in a list slot of the model, by slot.
ADDED_LATER_COMPONENT_ARGS = {
    ("dynamics", "lr_scale"): 1.0,
}

#: Classes that moved to another module after runs naming them were stored, by their class
#: path now -> the one those runs' keys hold. The resolved config keeps the class path a config
#: gives, so without this a config naming a class where it lives now
#: (``mmrec.callbacks.EMAWeights``) would get another key than the same run stored under the
#: old path (``mmrec.runs.EMAWeights``); the key reads every ``class_path`` through this map, so
#: both spellings give the stored key. The old paths still import (re-exports), so old configs
#: and checkpoints keep working. Issue 38 moved the callbacks out of ``mmrec.runs``.
MOVED_CLASS_PATHS = {
    f"mmrec.callbacks.{name}": f"mmrec.runs.{name}"
    for name in ("EMAWeights", "DecayOnPlateau", "RandomState", "EpochLogInterval", "EpochSummary")
}


def _old_class_paths(node: Any) -> None:
    """Rewrite, in place, every ``class_path`` of ``node`` found in :data:`MOVED_CLASS_PATHS`."""
    if isinstance(node, dict):
        path = node.get("class_path")
        if isinstance(path, str) and path in MOVED_CLASS_PATHS:
            node["class_path"] = MOVED_CLASS_PATHS[path]
        for value in node.values():
            _old_class_paths(value)
    elif isinstance(node, list):
        for value in node:
            _old_class_paths(value)


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
    (nor the :data:`ADDED_LATER` ones at their old behaviour's value), class paths of moved
    classes read as their old ones (:data:`MOVED_CLASS_PATHS`).

    Two runs with the same key train the same model on the same data with the same seed, so
    a stored result is reused whatever experiment, process or machine made it.
    """
    config = json.loads(json.dumps(config, default=str))  # a deep copy of plain data
    _old_class_paths(config)
    for dotted in VOLATILE:
        _drop(config, dotted)
    for dotted, value in ADDED_LATER.items():
        _drop(config, dotted, only_if=value)
    model = config.get("model") if isinstance(config, dict) else None
    for (slot, arg), value in ADDED_LATER_COMPONENT_ARGS.items():
        members = model.get(slot) if isinstance(model, dict) else None
        for member in members if isinstance(members, list) else []:
            init_args = member.get("init_args") if isinstance(member, dict) else None
            if isinstance(init_args, dict) and init_args.get(arg, ...) == value:
                init_args.pop(arg)
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


#: Seconds a ``git`` call may take before the commit is recorded as unknown.
GIT_TIMEOUT_S = 10.0


def _git(folder: Path, *args: str) -> bytes | None:
    """The output of ``git -C folder args``, or None (no git, not a checkout, an error)."""
    command = ["git", "--no-optional-locks", "-C", str(folder), *args]
    try:
        done = subprocess.run(command, capture_output=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(package: str | Path | None = None) -> dict[str, Any]:
    """The code that makes a result: ``{"version", "commit", "dirty", "diff"}``.

    ``commit`` is the git commit checked out where ``package`` (default: mmrec's own folder)
    lives, None where it is no file of a git checkout (an installed copy). ``dirty`` says
    whether the package's files or the checkout's ``pyproject.toml`` differ from that commit
    (uncommitted or untracked files; other files of the checkout do not run), and ``diff`` is
    a hash of those differences, so two dirty states of one commit tell apart; both None when
    git cannot tell.
    """
    from mmrec import __version__

    folder = Path(package) if package is not None else Path(__file__).resolve().parents[1]
    code: dict[str, Any] = {"version": __version__, "commit": None, "dirty": None, "diff": None}
    # a copy of the package that the checkout around it does not track is no commit of it
    if _git(folder, "ls-files", "--error-unmatch", "__init__.py") is None:
        return code
    commit, top = _git(folder, "rev-parse", "HEAD"), _git(folder, "rev-parse", "--show-toplevel")
    if commit is None or top is None:
        return code
    code["commit"] = commit.decode().strip()
    paths = ["--", ".", str(Path(top.decode().strip()) / "pyproject.toml")]
    diff = _git(folder, "diff", "HEAD", "--no-ext-diff", "--binary", *paths)
    untracked = _git(folder, "ls-files", "--others", "--exclude-standard", "-z", *paths)
    if diff is None or untracked is None:
        return code
    digest = hashlib.sha256(diff)
    names = sorted(n for n in untracked.split(b"\0") if n)
    for name in names:  # relative to the package folder
        digest.update(name + b"\0")
        path = folder / os.fsdecode(name)
        digest.update(path.read_bytes() if path.is_file() else b"")
    code["dirty"] = bool(diff or names)
    code["diff"] = digest.hexdigest()[:12] if code["dirty"] else None
    return code


@functools.cache
def current_code() -> dict[str, Any]:
    """:func:`code_version` of this process's mmrec, read once: the code it has imported."""
    return code_version()


def code_label(code: Any) -> str:
    """The code of a record (its ``code`` entry) in words; ``unknown`` for records stored
    before results named their code."""
    if not isinstance(code, dict) or not code.get("version"):
        return "unknown"
    commit = code.get("commit")
    label = f"mmrec {code['version']}, commit {str(commit)[:12] if commit else 'unknown'}"
    if commit and code.get("dirty") is None:
        label += ", uncommitted changes unknown"
    elif code.get("dirty"):
        label += f" with uncommitted changes {code.get('diff') or ''}".rstrip()
    return label


def _valid_record(record: Any) -> bool:
    """A record holds an object with test metrics (numbers)."""
    test = record.get("test") if isinstance(record, dict) else None
    return isinstance(test, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in test.values()
    )


class ResultStore:
    """A folder of results: ``<key>.json`` (metrics, settings, timing) and
    ``<key>.users.parquet`` (per-user test metrics, for paired tests).

    Copy the files of another store into this folder to assemble results made elsewhere. A
    damaged file (truncated, not a record, an unreadable table) is named in one line on stderr
    and its run counts as missing, so it is trained again (or reported missing); storing the
    run replaces it.

    Args:
        folder: The store's folder (created on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._checked: dict[Path, tuple[int, int]] = {}  # per-user tables read whole
        self._warned: set[tuple[Path, int, int]] = set()

    def _damaged(self, path: Path, why: str) -> None:
        stat = path.stat()
        seen = (path, stat.st_mtime_ns, stat.st_size)
        if seen not in self._warned:
            self._warned.add(seen)
            print(f"mmrec: warning: damaged store file {path} ({why}): its run is treated as "
                  "missing", file=sys.stderr, flush=True)  # fmt: skip

    def _readable_table(self, path: Path) -> bool:
        stat = path.stat()
        if self._checked.get(path) == (stat.st_mtime_ns, stat.st_size):
            return True
        try:
            columns = pl.read_parquet(path).columns
        except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            self._damaged(path, f"unreadable table: {first[:120]}")
            return False
        if "user_idx" not in columns:
            self._damaged(path, "no user_idx column")
            return False
        self._checked[path] = (stat.st_mtime_ns, stat.st_size)
        return True

    def get(self, key: str) -> dict | None:
        """The stored record of ``key``, or None (none stored, or a damaged one: named)."""
        path, users = self.folder / f"{key}.json", self.folder / f"{key}.users.parquet"
        if not path.is_file() or not users.is_file():
            return None
        try:
            record = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            self._damaged(path, f"not JSON: {err}")
            return None
        if not _valid_record(record):
            self._damaged(path, "no record with test metrics")
            return None
        return record if self._readable_table(users) else None

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
