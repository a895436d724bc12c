"""`mmrec tune`: Optuna search on validation NDCG@10; writes the best config and a record."""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from mmrec.config import ConfigError

MONITOR = "val/ndcg@10"


@dataclass
class TuneConfig:
    """Settings of ``mmrec tune``: a TPE search over dotted options of a training config,
    maximising the best validation NDCG@10 of each trial, pruning hopeless trials epoch by
    epoch, stored in SQLite so an interrupted search resumes. The test split is never used.

    Args:
        name: Study name (the storage key); trial runs go to ``<root>/<name>/trial<N>/``.
        base: Config files of the model to tune, in order (as ``mmrec fit --config``).
        space: The searched options, each ``{name: <dotted option>, type: float, low: 1e-4,
            high: 1e-2, log: true}``, ``{name: ..., type: int, low: 1, high: 4}`` or
            ``{name: ..., type: categorical, choices: [64, 128]}``. An option of one entry of
            a list of components names it by index: ``model.item_encoders[2].init_args.dropout``
            (the third item encoder of the resolved config). The name ``config`` searches over
            whole config files (``type: categorical``, ``choices`` of paths), applied after
            ``base`` as experiment variants are: a study over how content is fused can compare
            encoder sets and tune their options in one search.
        overrides: Dotted overrides for every trial (``trainer.max_epochs=60``).
        n_trials: Trials to run in this call (on top of the finished ones in the storage).
        storage: Optuna storage URL (default ``sqlite:///<root>/<name>/study.db``).
        seed: Seed of the TPE sampler (the trials' own ``seed_everything`` is the config's).
        worker: Number of this process when several run the same study at once (each gets
            its own sampler seed, ``seed + 1000 * worker``, so they do not repeat each other's
            trials).
        startup_trials: Trials with random parameters before TPE and pruning start.
        warmup_epochs: Epochs of a trial before it may be pruned.
        out: YAML of the best trial, complete, that ``mmrec fit --config`` runs as is, with
            the tuning record beside it (``.md``); default ``<root>/<name>/best.yaml``, in the
            study's folder (a config to commit is written by naming it, ``--out
            configs/tuned/<name>.yaml``).
        root: Root folder of the trial run folders.
    """

    name: str
    base: list[str]
    space: list[dict[str, Any]]
    overrides: list[str] = field(default_factory=list)
    n_trials: int = 20
    storage: str | None = None
    seed: int = 0
    worker: int = 0
    startup_trials: int = 5
    warmup_epochs: int = 5
    out: str | None = None
    root: str = "runs"


class PruneOnValidation(Callback):
    """Reports the epoch's validation NDCG@10 to an Optuna trial and stops a hopeless trial.

    Args:
        trial: The Optuna trial.
        monitor: The logged metric reported.
    """

    def __init__(self, trial: Any, monitor: str = MONITOR) -> None:
        self.trial, self.monitor = trial, monitor

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning validates before this hook, so the value is this epoch's
        import optuna

        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.trial.report(float(trainer.callback_metrics[self.monitor]), trainer.current_epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {trainer.current_epoch}")


def suggest(trial: Any, space: list[dict[str, Any]]) -> dict[str, Any]:
    """One value per option of ``space`` from the trial: ``{dotted option: value}``."""
    values = {}
    for spec in space:
        if "name" not in spec:
            raise ConfigError(f"each entry of space needs a name (a dotted option), got {spec}")
        key, kind = spec["name"], spec.get("type", "float")
        if key == "config" and kind != "categorical":
            raise ConfigError("space.config chooses among config files: give type: categorical")
        if kind == "float":
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
        elif kind == "int":
            values[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
            )
        elif kind == "categorical":
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        else:
            raise ConfigError(f"space.{key}: type must be float, int or categorical, got {kind!r}")
    return values


_INDEX = re.compile(r"^(?P<list>[^\[\]]+)\[(?P<index>\d+)\]\.(?P<rest>[^\[\]]+)$")


def _split_indexed(key: str) -> tuple[str, int, str] | None:
    """``a.b[2].c.d`` -> ``("a.b", 2, "c.d")``; None for a plain dotted option."""
    if "[" not in key and "]" not in key:
        return None
    m = _INDEX.match(key)
    if m is None:
        raise ConfigError(
            f"space option {key!r}: name one list entry as <list option>[<index>].<option>, "
            "e.g. model.item_encoders[1].init_args.dropout"
        )
    return m["list"], int(m["index"]), m["rest"]


def lookup(config: dict, key: str) -> Any:
    """The value of a space option (``a.b``, ``a.b[2].c``) in a resolved config."""
    split = _split_indexed(key)
    if split is None:
        parts: list[Any] = key.split(".")
    else:
        parts = [*split[0].split("."), split[1], *split[2].split(".")]
    node: Any = config
    for part in parts:
        node = node[part]
    return node


def _set_in_entry(entries: Any, key: str, index: int, rest: str, value: Any) -> None:
    """Set ``rest`` (dotted) inside ``entries[index]``, refusing what the entry does not have."""
    head = key.split("[")[0]
    if not isinstance(entries, list):
        raise ConfigError(f"space option {key!r}: {head} is not a list in the resolved config")
    if index >= len(entries):
        raise ConfigError(
            f"space option {key!r}: {head} has {len(entries)} entries (indices 0-"
            f"{len(entries) - 1}) in the resolved config"
        )
    node = entries[index]
    *parents, leaf = rest.split(".")
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"space option {key!r}: {head}[{index}] has no {part!r}")
        node = node[part]
    if not isinstance(node, dict) or leaf not in node:
        known = ", ".join(sorted(node)) if isinstance(node, dict) else "nothing"
        raise ConfigError(
            f"space option {key!r}: {head}[{index}] ({entries[index].get('class_path', '?')}) "
            f"has no option {leaf!r}; it has: {known}"
        )
    node[leaf] = value


def _args(cfg: TuneConfig, values: dict[str, Any], trial_name: str) -> list[str]:
    """The ``mmrec fit`` options of one trial: base, searched config files, overrides, values.

    Options of list entries (``model.item_encoders[1].init_args.dropout``) cannot be given on
    a command line, so the list is resolved without them, changed, and passed whole.
    """
    import json

    from mmrec.experiments.plan import _entry_args
    from mmrec.lightning_cli import resolve_config

    chosen = [values["config"]] if "config" in values else []  # a categorical: one file
    sources = [*cfg.base, *chosen, *cfg.overrides]
    args = [a for source in sources for a in _entry_args(source, Path())]
    indexed: dict[str, list[tuple[str, int, str, Any]]] = {}
    for key, value in values.items():
        if key == "config":
            continue
        split = _split_indexed(key)
        if split is None:  # strings as typed (class paths, names); other values as JSON
            args.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
        else:
            indexed.setdefault(split[0], []).append((key, split[1], split[2], value))
    if indexed:
        resolved = resolve_config(args)
        for head, changes in indexed.items():
            try:
                entries = lookup(resolved, head)
            except (KeyError, TypeError):
                raise ConfigError(f"space option {changes[0][0]!r}: no option {head}") from None
            for key, index, rest, value in changes:
                _set_in_entry(entries, key, index, rest, value)
            args.append(f"--{head}={json.dumps(entries)}")
    return [*args, f"--name={cfg.name}/{trial_name}", f"--trainer.default_root_dir={cfg.root}"]


def objective(cfg: TuneConfig):
    """The Optuna objective: fit one trial (never test), return its best validation value.
    Each trial is a W&B run of its own, grouped by study, its number and values in the
    config."""
    from mmrec.experiments.tracking import run_tracked

    def run(trial) -> float:
        values = suggest(trial, cfg.space)
        args = _args(cfg, values, f"trial{trial.number}")
        trial.set_user_attr("args", args)
        wandb = {"tune": {"study": cfg.name, "trial": trial.number, "params": values}}
        cli = run_tracked(["fit", *args], cfg.name, wandb, callbacks=[PruneOnValidation(trial)])
        score = cli.trainer.checkpoint_callback.best_model_score
        if score is None:
            raise ConfigError(f"trial {trial.number} logged no {MONITOR}")
        trial.set_user_attr("run_folder", str(cli.run.folder))
        return float(score)

    return run


def write_best(cfg: TuneConfig, study: Any, out: Path) -> Path:
    """The best trial's complete configuration as a YAML ``mmrec fit`` runs as is."""
    import yaml

    from mmrec.lightning_cli import resolve_config

    best = study.best_trial
    config = resolve_config(_args(cfg, best.params, "best"))
    config["name"] = f"{cfg.name}_best"
    for key in ("trainer.default_root_dir", "checkpoint.dirpath", "last_checkpoint.dirpath"):
        section, leaf = key.split(".")
        config.get(section, {}).pop(leaf, None)
    config.pop("ckpt_path", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = [
        f"# mmrec fit --config {out}",
        f"# Best of {len(study.trials)} trials of `mmrec tune` study {cfg.name!r} (trial "
        f"{best.number}: best validation NDCG@10 {best.value:.4f}), chosen on validation only.",
        "# Searched: " + ", ".join(f"{k}={v!r}" for k, v in best.params.items()),
    ]
    out.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))
    return out


class _UserErrorOnce(logging.Filter):
    """Drops Optuna's log of a trial stopped by a user error (its traceback, then "failed with
    value None"): `mmrec tune` prints that error as one line that says what to change."""

    def __init__(self) -> None:
        super().__init__()
        self.follow_ups: set[str] = set()  # the second record of each dropped failure

    def filter(self, record: logging.LogRecord) -> bool:
        from mmrec.parsing import user_error_types

        message = record.getMessage()
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, user_error_types()):
            trial = message.split(" failed with ", 1)[0]  # "Trial 3"
            self.follow_ups.add(f"{trial} failed with value None.")
            return False
        return message not in self.follow_ups


def tune(cfg: TuneConfig) -> Any:
    """Run (or resume) the study and write the best config; returns the study."""
    import optuna

    if not cfg.space:
        raise ConfigError("the search space is empty: give `space:` with at least one option")
    folder = Path(cfg.root) / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    url = cfg.storage or f"sqlite:///{folder / 'study.db'}"
    # a heartbeat marks the trials of an interrupted process as failed when the study resumes
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    study = optuna.create_study(
        study_name=cfg.name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=cfg.seed + 1000 * cfg.worker, n_startup_trials=cfg.startup_trials
        ),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
        ),
    )
    # trials of a process that was killed (no heartbeat for grace_period): FAIL, not RUNNING
    optuna.storages.fail_stale_trials(study)
    done = len([t for t in study.trials if t.state.is_finished()])
    print(f"mmrec tune: study {cfg.name!r} in {url}: {done} finished trial(s) so far")
    quiet, handlers = _UserErrorOnce(), logging.getLogger("optuna").handlers
    for handler in handlers:  # Optuna's own handler: its modules' records propagate to it
        handler.addFilter(quiet)
    try:
        study.optimize(objective(cfg), n_trials=cfg.n_trials, catch=())
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
    out = Path(cfg.out or folder / "best.yaml")
    write_best(cfg, study, out)
    write_record(study, out.with_suffix(".md"))
    print(f"mmrec tune: best validation NDCG@10 {study.best_value:.4f} -> {out}")
    return study


def write_record(study: Any, path: Path) -> None:
    """The tuning record: every trial, its parameters, state, validation value and epochs."""
    names = sorted({k for t in study.trials for k in t.params})
    lines = [
        f"# Tuning record of study `{study.study_name}` (validation NDCG@10, maximised)",
        "",
        "Epochs: validated epochs of the trial (a trial that ran to the epoch cap may not have",
        "converged; a pruned one stopped there).",
        "",
        "| trial | state | val NDCG@10 | epochs | " + " | ".join(names) + " |",
        "|---" * (4 + len(names)) + "|",
    ]
    for t in study.trials:
        value = "—" if t.value is None else f"{t.value:.4f}"
        cells = [_fmt(t.params.get(n)) for n in names]
        epochs = len(t.intermediate_values)
        lines.append(
            f"| {t.number} | {t.state.name} | {value} | {epochs} | " + " | ".join(cells) + " |"
        )
    path.write_text("\n".join(lines) + "\n")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_parser():
    """The ``mmrec tune`` argument parser (jsonargparse; ``--config`` takes a YAML file)."""
    from mmrec.parsing import dataclass_parser

    return dataclass_parser(
        TuneConfig,
        "mmrec tune",
        "Hyper-parameter search with Optuna (TPE, pruning on validation NDCG@10, SQLite "
        "storage: rerun the command to resume). Writes the best trial as a config for "
        "`mmrec fit` and a tuning record.",
    )


def main(argv: list[str] | None = None) -> int:
    """``mmrec tune`` entry point; returns the exit code."""
    from mmrec.parsing import exit_status, parse_settings

    cfg = parse_settings(TuneConfig, build_parser(), argv)
    return exit_status("mmrec tune", lambda: tune(cfg))


if __name__ == "__main__":
    sys.exit(main())
