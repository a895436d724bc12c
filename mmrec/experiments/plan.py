"""The plan of `mmrec experiment`: its settings (:class:`ExperimentConfig`), the runs they make
(variants x seeds x folds, baselines, refit twins), each with the key of its resolved config."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrec.config import ConfigError
from mmrec.experiments.store import run_key


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
                # its own key: the training's, and the key of the config it is tested with (so
                # what leaves a key alone, a run's name or an option added later at its old
                # value, leaves this one alone too: the same test from any experiment)
                tested_as = run_key(resolve_config([*args, *tested]))
                both = run_key({"trained_as": key, "tested_as": tested_as})
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


#: Appended to a variant's name for its refit twin in the tables.
SUFFIX = " (refit)"


def refit_twins(runs: list[Run]) -> list[Run]:
    """A refit twin of every model run: the same options plus ``data.fit_on_valid`` (its epoch
    count comes from the original's stored best epoch when it runs). Its key is derived from
    the original's, which its resolved config (and so its epoch count) determines."""
    twins = []
    for run in runs:
        if run.baseline is not None:
            continue
        name = next((a for a in reversed(run.args) if a.startswith("--name=")), "--name=refit")
        args = (*run.args, "--data.fit_on_valid=true", f"{name}/refit")
        key = run_key({"refit_of": run.key})
        twins.append(
            dataclasses.replace(
                run,
                variant=run.variant + SUFFIX,
                args=args,
                key=key,
                refit_of=run.key,
                trained_as=None,
            )
        )
    return twins
