"""`mmrec experiment`: variants x seeds from config files, stored results, tables and tests."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mmrec.config import ConfigError
from mmrec.experiments.store import ResultStore, code_label, current_code, run_key
from mmrec.experiments.tracking import run_tracked


@dataclass
class ExperimentConfig:
    """Settings of ``mmrec experiment``: train and test every variant with every seed (best
    validation checkpoint), store each result under the hash of its resolved config, and write
    ``results.md``, ``results.csv`` and ``results.png`` with paired significance tests.

    Args:
        name: Experiment name; run folders go to ``<root>/<name>/<variant>/seed<seed>/``.
        base: Config files every variant starts from, in order (as ``mmrec fit --config``).
        variants: Variant name -> its config files and/or dotted overrides
            (``model.lr=0.001``), applied after ``base`` and ``overrides`` in order; ``[]`` is
            the base itself.
        seeds: Seeds of every variant (``seed_everything`` and the training shuffle).
        reference: The variant the others are tested against (default: the first variant).
        overrides: Dotted overrides for every variant (after ``base``, before its own).
        baselines: Non-neural baselines evaluated on the base config's data and test split,
            name -> class path (e.g. ``mmrec.experiments.baselines.PopularityBaseline``) or
            ``{class_path, init_args}`` (subclasses of ``Baseline`` only); they join the table
            (deterministic: one run stands for every seed) and are evaluated even with
            ``train`` false (they train nothing).
        published: Published figures listed beside the table: mappings with ``model``,
            metric values (``ndcg@10``, ``hr@10``...), ``uses_target_time``, ``uses_content``
            and ``source``.
        variant_info: What each variant uses, for the comparison with published figures:
            variant -> ``{uses_target_time: bool, uses_content: bool}``.
        metrics: Metric columns of the tables.
        out: Folder of results.md / results.csv / results.png (default
            ``runs/experiments/<name>``, beside the default store; the committed tables are
            rewritten only by naming their folder, ``--out benchmarks/results/<name>``).
        store: Folder of stored results (``<key>.json`` + ``<key>.users.parquet``); copy
            files of other stores here to assemble results made elsewhere.
        root: Root folder of the run folders (``trainer.default_root_dir``).
        train: Train and test the runs without a stored result; False only assembles the
            stored ones and names what is missing (missing baselines are still evaluated).
        shard: ``i/n``: run only the missing runs ``i, i+n, i+2n...`` (for several processes
            or machines sharing one store).
        jobs: Run the missing runs in this many processes on this machine (torch threads
            split between them); the table is written when all are done.
        report: Write results.md/csv/png (off for the worker processes of ``jobs``).
        note: Free text added under the tables.
        mixed_code: Whether the tables may mix results made by different code (each result
            stores the mmrec version, git commit and uncommitted changes that made it;
            results.md names those made by other code than the rest). False refuses, in one
            line naming them, before training anything that would mix (stored results of
            other code than this process's) and before writing the tables.
        adopt: Run folders already trained with ``mmrec fit`` (``<root>/<name>/<time>``,
            holding ``fit/config.yaml`` and ``checkpoints/best.ckpt``), for example probes of
            a setting before it became the default: a folder whose saved config has the key
            of a planned run without a stored result is tested with its best checkpoint and
            stored, instead of training that run again. Its training time is the time from
            writing ``fit/config.yaml`` to the last write of ``checkpoints/last.ckpt``.
            A folder that matches no missing run is named and skipped.
        claims: Folder where the worker processes of ``jobs`` claim runs (one empty file per
            run key): each takes the next unclaimed run, so none waits while runs are left.
            Set by ``mmrec experiment`` for its workers; not needed by hand.
        refit: Refit before test: every model run also gets a twin, ``<variant> (refit)``,
            trained again on the training and validation events together
            (``data.fit_on_valid``) for the epochs its own validation chose (best epoch + 1),
            then tested: as a deployed system retrains up to the present before it serves.
            A twin runs after its original (it waits while the original has no result); the
            tables list both, so every figure has its protocol, with and without refit.
        folds: Rolling origin: fold name -> config files and/or dotted overrides (typically
            the data of one test window, e.g. ``data.prepare=configs/data/<fold>.yaml`` and
            ``data.data_dir=...``), applied after each variant's own entries. Every variant,
            seed and baseline runs on every fold; ``results.md`` of each fold goes to
            ``<out>/<fold>/`` and the one in ``<out>`` pools the folds (every fold's test users
            together, paired tests over them). Empty: one table, no folds.
        test_overrides: Dotted overrides applied when testing only, e.g.
            ``data.eval_protocol=successive``: models trained and early-stopped as without
            them (validation included), then tested under them, as a deployed model is
            between retrains. A model run whose training is stored (the same run without
            them, from any experiment) is tested from that run's best checkpoint instead of
            being trained again; a run trained here also stores that run (tested without
            them). Baselines are evaluated under them too.
    """

    name: str
    base: list[str]
    variants: dict[str, list[str]]
    seeds: list[int] = field(default_factory=lambda: [0])
    reference: str | None = None
    overrides: list[str] = field(default_factory=list)
    baselines: dict[str, str | dict[str, Any]] = field(default_factory=dict)
    # typed values: a string of a published row stays a string ("a: b" is no mapping)
    published: list[dict[str, str | float | bool | None]] = field(default_factory=list)
    variant_info: dict[str, dict[str, bool | None]] = field(default_factory=dict)
    metrics: list[str] = field(
        default_factory=lambda: ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "map@10"]
    )
    out: str | None = None
    store: str = "runs/experiments/store"
    root: str = "runs"
    train: bool = True
    shard: str = "0/1"
    jobs: int = 1
    report: bool = True
    note: str = ""
    mixed_code: bool = True
    adopt: list[str] = field(default_factory=list)
    claims: str | None = None
    refit: bool = False
    folds: dict[str, list[str]] = field(default_factory=dict)
    test_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # plain dicts, as written in the file (jsonargparse parses a nested class_path mapping
        # into a Namespace): for the run keys, the tables and the workers' YAML (``jobs``)
        self.baselines = {name: _plain(entry) for name, entry in self.baselines.items()}
        check_settings(self)


#: Keys of a ``published`` row: its name and source, what it uses, and metric figures.
_PUBLISHED_TEXT, _PUBLISHED_FLAGS = ("model", "source"), ("uses_target_time", "uses_content")


def check_settings(cfg: ExperimentConfig) -> None:
    """Refuse, in one line naming the key, an experiment whose names are not strings, whose
    published rows miss their name, source or flags or give a figure that is not a number,
    or whose ``variant_info`` flags are not booleans: before anything trains."""
    for key in ("variants", "baselines", "folds", "variant_info"):
        for name in getattr(cfg, key) or {}:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{key}: the name {name!r} is not a string (quote it)")
    if not isinstance(cfg.name, str) or not cfg.name.strip():
        raise ConfigError(f"name: {cfg.name!r} is not a string")
    for i, row in enumerate(cfg.published):
        where = f"published[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(
                f"{where}: a mapping with model, figures, flags and source, got {row!r}"
            )
        for key in _PUBLISHED_TEXT:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ConfigError(
                    f"{where}.{key}: a string is needed, got {row.get(key)!r} (quote a text "
                    "that holds ': ')"
                )
        for key in _PUBLISHED_FLAGS:
            if not isinstance(row.get(key), bool):
                raise ConfigError(f"{where}.{key}: true or false is needed, got {row.get(key)!r}")
        figures = {k: v for k, v in row.items() if k not in (*_PUBLISHED_TEXT, *_PUBLISHED_FLAGS)}
        for key, value in figures.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key}: a number is needed, got {value!r}")
        if not figures:
            raise ConfigError(f"{where}: no figure (e.g. ndcg@10: 0.05)")
    for name, info in cfg.variant_info.items():  # (a variant left out by --variants: kept)
        for key, value in (info or {}).items():
            if key not in _PUBLISHED_FLAGS or not isinstance(value, bool):
                raise ConfigError(
                    f"variant_info.{name}.{key}: only uses_target_time / uses_content, true or "
                    f"false, got {key}: {value!r}"
                )


@dataclass(frozen=True)
class Run:
    """One (variant, seed): its command-line options and the key of its resolved config."""

    variant: str
    seed: int
    args: tuple[str, ...]
    key: str
    baseline: str | dict[str, Any] | None = None
    refit_of: str | None = None  # a refit twin: the key of the run whose best epoch it takes
    fold: str | None = None  # the rolling-origin fold it runs on (``folds``)
    test_args: tuple[str, ...] = ()  # options of its test only (``test_overrides``)
    trained_as: str | None = None  # with test_args: the key of the run whose training it is


def slug(text: str) -> str:
    """A folder-safe name for a variant (``ID + text`` -> ``id_text``)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "variant"


def _entry_args(entry: str, here: Path) -> list[str]:
    """``--config FILE`` for a config file, ``--key=value`` for a dotted override."""
    if entry.endswith((".yaml", ".yml")) and "=" not in entry:
        path = Path(entry)
        if not path.is_file() and (here / entry).is_file():
            path = here / entry
        if not path.is_file():
            raise ConfigError(f"config file {entry} not found (paths are relative to the cwd)")
        return [f"--config={path}"]
    if "=" not in entry:
        raise ConfigError(
            f"variant entry {entry!r} is neither a config file (.yaml) nor an override key=value"
        )
    key, value = entry.split("=", 1)
    return [f"--{key.strip().lstrip('-')}={value.strip()}"]


def _test_entry_args(entry: str) -> list[str]:
    """``--key=value`` of a ``test_overrides`` entry (dotted overrides only: a config file
    could change the training)."""
    if "=" not in entry:
        raise ConfigError(
            f"test_overrides entry {entry!r} is no dotted override key=value (e.g. "
            "data.eval_protocol=successive)"
        )
    return _entry_args(entry, Path())


def plan(cfg: ExperimentConfig, here: Path = Path()) -> list[Run]:
    """Every run of the experiment, variants x seeds, then the baselines (seed 0)."""
    from mmrec.lightning_cli import resolve_config

    if not cfg.variants:
        raise ConfigError("an experiment needs at least one variant")
    reference = cfg.reference or next(iter(cfg.variants))
    if reference not in cfg.variants and reference not in cfg.baselines:
        raise ConfigError(f"reference {reference!r} is not a variant: {list(cfg.variants)}")
    common = [a for entry in [*cfg.base, *cfg.overrides] for a in _entry_args(entry, here)]
    tested = tuple(a for entry in cfg.test_overrides for a in _test_entry_args(entry))
    runs = []
    for fold, fold_entries in (cfg.folds or {None: []}).items():
        at = [a for entry in fold_entries or [] for a in _entry_args(entry, here)]
        name = f"{cfg.name}/{slug(fold)}" if fold is not None else cfg.name
        for variant, entries in cfg.variants.items():
            own = [a for entry in entries or [] for a in _entry_args(entry, here)]
            for seed in cfg.seeds:
                args = [
                    *common,
                    *own,
                    *at,
                    f"--seed_everything={seed}",
                    f"--data.seed={seed}",
                    f"--name={name}/{slug(variant)}/seed{seed}",
                    f"--trainer.default_root_dir={cfg.root}",
                ]
                key = run_key(resolve_config(args))
                if not tested:
                    runs.append(Run(variant, seed, tuple(args), key, fold=fold))
                    continue
                # its own key: the training's, and the whole config it is tested with
                both = run_key({"trained_as": key, "tested_as": resolve_config([*args, *tested])})
                runs.append(
                    Run(variant, seed, tuple(args), both, fold=fold, test_args=tested,
                        trained_as=key)
                )  # fmt: skip
        if cfg.baselines:
            data = resolve_config([*common, *at, *tested])["data"]
            for variant, entry in cfg.baselines.items():
                spec = baseline_spec(entry, f"baselines[{variant!r}]")
                key = run_key({"baseline": spec, "data": data, "ks": _ks(cfg)})
                args = (*common, *at, *tested)
                runs.append(Run(variant, 0, args, key, baseline=spec, fold=fold))
    if cfg.refit:
        from mmrec.experiments.refit import refit_twins

        runs += refit_twins(runs)
    return runs


def build_baseline(entry: str | dict[str, Any], slot: str):
    """The :class:`~mmrec.experiments.baselines.Baseline` of a ``baselines`` entry (a class
    path or a ``{class_path, init_args}`` spec), built by :func:`~mmrec.config.instantiate`:
    only a ``Baseline`` subclass, every class checked before anything is called."""
    from mmrec.config import instantiate
    from mmrec.experiments.baselines import Baseline

    spec = {"class_path": entry} if isinstance(entry, str) else entry
    try:
        return instantiate(spec, Baseline, slot)
    except (ImportError, TypeError, ValueError) as err:
        message = str(err)  # the checks name the slot; a constructor's own error does not
        raise ConfigError(message if slot in message else f"{slot}: {message}") from err


def _plain(value: Any) -> Any:
    """``value`` with jsonargparse's Namespaces (what a nested ``class_path`` mapping of a
    config file is parsed into) turned back into dicts."""
    from jsonargparse import Namespace

    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def baseline_spec(entry: str | dict[str, Any], slot: str) -> str | dict[str, Any]:
    """What a baseline's run key holds: a class path as given (the keys of stored runs stay),
    a spec with every init argument filled in (defaults given or not, one key)."""
    from mmrec.config import component_spec

    baseline = build_baseline(entry, slot)  # checked now, not after the variants' training
    return entry if isinstance(entry, str) else component_spec(baseline)


def _ks(cfg: ExperimentConfig) -> list[int]:
    found = {int(m.split("@")[1]) for m in cfg.metrics if "@" in m}
    return sorted(found | {10, 20})


def _wandb(run: Run, cfg: ExperimentConfig) -> dict[str, Any]:
    """The W&B config of a run's fit and test (its run is grouped by the experiment name)."""
    return {"experiment": {"name": cfg.name, "variant": run.variant, "seed": run.seed,
                           "key": run.key}}  # fmt: skip


def train_and_test(
    run: Run, cfg: ExperimentConfig, store: ResultStore | None = None
) -> tuple[dict, pl.DataFrame]:
    """Fit a run, test its best-validation checkpoint: ``(record, per-user table)``; the fit
    and the test are W&B runs of their own, grouped by experiment. A run with ``test_args``
    is tested from the stored training of ``trained_as`` when its best checkpoint is on disk
    (no training); trained here, that training is stored too (tested without them)."""
    import torch

    if run.test_args and store is not None:
        reused = _tested_from_stored(run, cfg, store)
        if reused is not None:
            return reused
    start = time.perf_counter()
    fit = run_tracked(["fit", *run.args], cfg.name, _wandb(run, cfg))
    train_s = time.perf_counter() - start
    ckpt = fit.trainer.checkpoint_callback
    if not ckpt.best_model_path:
        raise ConfigError(f"{run.variant} seed {run.seed}: the fit saved no best checkpoint")
    best_epoch = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["epoch"]
    record = {
        "val_ndcg@10": float(ckpt.best_model_score),
        "best_epoch": int(best_epoch),
        "epochs": int(fit.trainer.current_epoch),
        "train_seconds": round(train_s, 1),
        "run_folder": str(fit.run.folder),
    }
    if run.test_args and store is not None and store.get(run.trained_as) is None:
        plain = dataclasses.replace(run, key=run.trained_as, test_args=(), trained_as=None)
        test = run_tracked(
            ["test", *run.args, f"--ckpt_path={ckpt.best_model_path}"], cfg.name,
            _wandb(plain, cfg),
        )  # fmt: skip
        store.put(plain.key, _describe(record | {"test": _test_metrics(test)}, plain, cfg),
                  test.model.per_user)  # fmt: skip
    test = run_tracked(
        ["test", *run.args, *run.test_args, f"--ckpt_path={ckpt.best_model_path}"],
        cfg.name, _wandb(run, cfg),
    )  # fmt: skip
    record = {"test": _test_metrics(test), **record}
    if run.test_args:
        record["trained_as"] = run.trained_as
    return record, test.model.per_user


def _tested_from_stored(
    run: Run, cfg: ExperimentConfig, store: ResultStore
) -> tuple[dict, pl.DataFrame] | None:
    """``run`` tested under its ``test_args`` from the best checkpoint of its stored training
    (``trained_as``); None when that run is not stored or its checkpoint is gone."""
    from mmrec.experiments.tracking import run_tracked

    trained = store.get(run.trained_as)
    folder = (trained or {}).get("run_folder")
    best = Path(folder) / "checkpoints" / "best.ckpt" if folder else None
    if best is None or not best.is_file():
        if trained is not None:
            print(
                f"mmrec experiment: {run.variant} seed {run.seed}: the checkpoint of its stored "
                f"training ({best or 'no run folder'}) is gone: training it again", flush=True
            )  # fmt: skip
        return None
    print(f"mmrec experiment: {run.variant} seed {run.seed}: testing the stored training "
          f"{run.trained_as} ({best})", flush=True)  # fmt: skip
    test = run_tracked(
        ["test", *run.args, *run.test_args, f"--ckpt_path={best}"], cfg.name, _wandb(run, cfg)
    )
    record = {"test": _test_metrics(test)} | {
        k: trained[k] for k in ("val_ndcg@10", "best_epoch", "epochs", "train_seconds")
    }
    record |= {"run_folder": folder, "trained_as": run.trained_as}
    return record, test.model.per_user


def adopt_runs(cfg: ExperimentConfig, runs: list[Run], store: ResultStore) -> list[Run]:
    """Test and store the run folders of ``cfg.adopt`` whose saved config is a planned,
    missing run (see :class:`ExperimentConfig`); returns the runs adopted."""
    import yaml

    from mmrec.checkpoints import read_checkpoint
    from mmrec.experiments.tracking import run_tracked

    missing = {
        r.trained_as or r.key: r
        for r in runs
        if r.baseline is None and r.refit_of is None and store.get(r.key) is None
    }
    adopted = []
    for entry in cfg.adopt:
        folder = Path(entry)
        saved = folder / "fit" / "config.yaml"
        best, last = folder / "checkpoints" / "best.ckpt", folder / "checkpoints" / "last.ckpt"
        for needed in (saved, best, last):
            if not needed.is_file():
                raise ConfigError(
                    f"adopt: {folder} is not a finished `mmrec fit` run folder ({needed} is "
                    "missing); give folders like runs/<name>/<time>"
                )
        key = run_key(yaml.safe_load(saved.read_text()))
        run = missing.pop(key, None)
        if run is None:
            stored = store.get(key)
            why = (
                f"its run ({stored.get('variant', '?')} seed {stored.get('seed', '?')}) is "
                "already stored"
                if stored
                else "its config is no run of this experiment (compare it with `mmrec fit "
                "--print_config` and the experiment's settings)"
            )
            print(f"mmrec experiment: adopt: skipped {folder}: {why}", flush=True)
            continue
        state = read_checkpoint(best)  # one line, no traceback, for a damaged or crafted file
        monitor = [
            v
            for k, v in (state.get("callbacks") or {}).items()
            if k.startswith("ModelCheckpoint")
            and isinstance(v, dict)
            and v.get("best_model_score") is not None
        ]
        if not monitor:
            raise ConfigError(f"adopt: {best} records no best validation score")
        print(f"mmrec experiment: adopt: testing {run.variant} seed {run.seed} from {folder}")
        test = run_tracked(
            ["test", *run.args, *run.test_args, f"--ckpt_path={best}"], cfg.name,
            _wandb(run, cfg),
        )  # fmt: skip
        epochs = int(read_checkpoint(last).get("epoch", -1)) + 1
        record = {
            "test": _test_metrics(test),
            "val_ndcg@10": float(monitor[0]["best_model_score"]),
            "best_epoch": int(state.get("epoch", -1)),
            "epochs": int(epochs),
            "train_seconds": round(last.stat().st_mtime - saved.stat().st_mtime, 1),
            "run_folder": str(folder),
            "adopted": True,
        }
        if run.test_args:
            record["trained_as"] = run.trained_as
        store.put(run.key, _describe(record, run, cfg), test.model.per_user)
        adopted.append(run)
    return adopted


def _test_metrics(test) -> dict[str, float]:
    return {
        k.removeprefix("test/"): float(v)
        for k, v in test.trainer.callback_metrics.items()
        if k.startswith("test/") and "/slice/" not in k and "slice/" not in k
    }


def _describe(record: dict, run: Run, cfg: ExperimentConfig) -> dict:
    return record | {
        "key": run.key,
        "experiment": cfg.name,
        "variant": run.variant,
        "seed": run.seed,
        "args": list(run.args),
        "baseline": run.baseline,
        "code": current_code(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def evaluate_baseline(run: Run, cfg: ExperimentConfig) -> tuple[dict, pl.DataFrame]:
    """Fit a baseline on the base data (its training split, or the event log each query time
    cuts) and test it (same metrics)."""
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.experiments.baselines import evaluate_baseline as evaluate
    from mmrec.ingest.settings import PrepareConfig
    from mmrec.lightning_cli import resolve_config

    data = dict(resolve_config(list(run.args))["data"])
    data["prepare"] = PrepareConfig(**(data.get("prepare") or {}))
    dm = AmazonDataModule(**data)
    baseline = build_baseline(run.baseline, f"baselines[{run.variant!r}]").fit(dm)
    start = time.perf_counter()
    result = evaluate(baseline, dm, "test", ks=_ks(cfg), beyond=True)
    seconds = round(time.perf_counter() - start, 1)
    per_user = result.per_user.sort("user_idx")
    # validation, as the models': what chooses among baselines and their settings
    val = evaluate(baseline, dm, "valid", ks=[10]).metrics["ndcg@10"]
    record = {"test": result.metrics, "val_ndcg@10": float(val), "epochs": 0}
    return record | {"train_seconds": seconds}, per_user


def execute(cfg: ExperimentConfig, runs: list[Run], store: ResultStore) -> list[Run]:
    """Run (this shard of) the runs without a stored result; returns those it ran."""
    index, count = (int(x) for x in cfg.shard.split("/"))
    # baselines first (seconds), then seed by seed: a stopped experiment has every variant's
    # first seeds rather than every seed of the first variants
    # (refit twins after every original run: they take their epoch count from it)
    order = sorted(runs, key=lambda r: (r.baseline is None, r.refit_of is not None, r.seed))
    missing = [r for r in order if _missing(r, store)][index::count]
    done = []
    for i, run in enumerate(missing, 1):
        if run.refit_of is not None and store.get(run.refit_of) is None:
            print(f"mmrec experiment: {run.variant} seed {run.seed} waits for its run", flush=True)
            continue
        if cfg.claims and not _claim(Path(cfg.claims), run.key):
            continue  # another worker has it
        if not _missing(run, store):
            continue
        done.append(run)
        what = f"{run.variant} seed {run.seed}" if run.baseline is None else run.variant
        print(f"mmrec experiment: [{i}/{len(missing)}] {what} (key {run.key})", flush=True)
        if run.refit_of is not None:
            from mmrec.experiments.refit import refit_and_test

            record, per_user = refit_and_test(run, cfg, store)  # type: ignore[misc]
        elif run.baseline is None:
            record, per_user = train_and_test(run, cfg, store)
        else:
            record, per_user = evaluate_baseline(run, cfg)
        store.put(run.key, _describe(record, run, cfg), per_user)
    return done


def _missing(run: Run, store: ResultStore) -> bool:
    """Whether ``run`` is to be made: not stored, or a baseline stored before baselines were
    validated (seconds to evaluate again; its key and test figures stay)."""
    record = store.get(run.key)
    return record is None or (run.baseline is not None and "val_ndcg@10" not in record)


def _claim(folder: Path, key: str) -> bool:
    """Atomically claim run ``key`` for this process; False when another one claimed it."""
    try:
        os.close(os.open(folder / key, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _absolute(entry: str, here: Path) -> str:
    if "=" in entry or not entry.endswith((".yaml", ".yml")):
        return entry
    path = Path(entry) if Path(entry).is_file() else here / entry
    return str(path.resolve())


def run_jobs(cfg: ExperimentConfig, here: Path) -> None:
    """The missing runs (of this ``--shard``) in ``cfg.jobs`` worker processes, each with its
    share of the CPU threads, each taking the next unclaimed run (``--claims``); they read
    this exact configuration from a file in the store."""
    import yaml

    settings = dataclasses.asdict(cfg) | {"jobs": 1, "report": False}
    settings["base"] = [_absolute(e, here) for e in cfg.base]
    settings["overrides"] = [_absolute(e, here) for e in cfg.overrides]
    settings["variants"] = {
        v: [_absolute(e, here) for e in entries or []] for v, entries in cfg.variants.items()
    }
    Path(cfg.store).mkdir(parents=True, exist_ok=True)
    jobs_file = Path(cfg.store) / f".jobs-{slug(cfg.name)}.yaml"
    jobs_file.write_text(yaml.safe_dump(settings, sort_keys=False))
    claims = Path(cfg.store) / f".claims-{slug(cfg.name)}-{os.getpid()}"
    claims.mkdir()
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mmrec.cli",
                "experiment",
                f"--config={jobs_file}",
                f"--claims={claims}",
            ],
            env=env,
        )  # fmt: skip
        for _ in range(cfg.jobs)
    ]
    failed = [p.args for p in procs if p.wait() != 0]
    shutil.rmtree(claims, ignore_errors=True)
    if failed:
        raise ConfigError(f"{len(failed)} of {cfg.jobs} worker processes failed (see above)")


def build_parser():
    """The ``mmrec experiment`` argument parser (jsonargparse; ``--config`` takes a YAML file)."""
    from mmrec.parsing import dataclass_parser

    return dataclass_parser(
        ExperimentConfig,
        "mmrec experiment",
        "Train and test variants x seeds from config files; results.md/csv/png with mean ± "
        "std over seeds and paired tests against the reference variant.",
    )


def config_from_args(argv: list[str] | None = None) -> tuple[ExperimentConfig, str | None]:
    """Parses command-line arguments into an ExperimentConfig and the config file given."""
    from mmrec.parsing import parse_settings

    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_settings(ExperimentConfig, build_parser(), argv)
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    files += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return cfg, (files[-1] if files else None)


def check_code(cfg: ExperimentConfig, runs: list[Run], store: ResultStore, training: bool) -> None:
    """With ``mixed_code`` false, refuse results of other code than the rest: the stored runs
    of the experiment and, when ``training``, the missing ones this process would make."""
    from mmrec.experiments.report import collect, other_code, run_name

    if cfg.mixed_code:
        return
    found, _ = collect(runs, store)
    made = [(run_name(r), code_label(r.get("code"))) for rs in found.values() for r in rs]
    if training:
        now = code_label(current_code())
        stored = {r["key"] for rs in found.values() for r in rs}
        made += [(f"{run_name(dataclasses.asdict(r))} (to train)", now)
                 for r in runs if r.key not in stored]  # fmt: skip
    most, others = other_code(made)
    if others:
        raise ConfigError(
            f"results of other code than the rest ({most}) would be mixed: "
            + ", ".join(f"{name} ({label})" for name, label in others)
            + "; train them again (move their files out of the store) or pass --mixed_code true"
            " to list them in results.md"
        )


def run(cfg: ExperimentConfig, config_file: str | None, command: str | None = None) -> None:
    """Plan the runs, train the missing ones (here, or in ``cfg.jobs`` processes) and write
    the tables."""
    from mmrec.experiments.report import write_report

    current_code()  # the code this process imported, read now: the tree may change while it runs
    here = Path(config_file).parent if config_file else Path()
    store = ResultStore(cfg.store)
    runs = plan(cfg, here)
    made = runs  # the runs this process may make: missing baselines even without training
    if not (cfg.train or cfg.adopt):
        made = [r for r in runs if r.baseline is not None or store.get(r.key) is not None]
    check_code(cfg, made, store, training=True)
    if cfg.adopt and not cfg.claims:
        adopt_runs(cfg, runs, store)
    if cfg.train and cfg.jobs > 1:
        run_jobs(cfg, here)
    elif cfg.train:
        execute(cfg, runs, store)
    else:  # baselines train nothing: evaluated when missing, even when only assembling
        execute(cfg, [r for r in runs if r.baseline is not None], store)
    if cfg.report:
        check_code(cfg, runs, store, training=False)
        out = Path(cfg.out or Path("runs") / "experiments" / cfg.name)
        if cfg.folds:
            from mmrec.experiments.folds import write_fold_reports

            missing = write_fold_reports(cfg, runs, store, out, command)
        else:
            missing = write_report(cfg, runs, store, out, command)
        print(f"mmrec experiment: wrote {out / 'results.md'}, results.csv, results.png")
        if missing:
            print(f"mmrec experiment: {len(missing)} run(s) missing: " + ", ".join(missing))


def main(argv: list[str] | None = None) -> int:
    """``mmrec experiment`` entry point; returns the exit code."""
    from mmrec.parsing import exit_status

    argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["mmrec", "experiment", *argv])

    def parse_and_run() -> None:  # a setting refused by check_settings: one line too
        cfg, config_file = config_from_args(argv)
        run(cfg, config_file, command)

    return exit_status("mmrec experiment", parse_and_run)


if __name__ == "__main__":
    sys.exit(main())
