"""`mmrec experiment`: variants x seeds from config files, stored results, tables and tests.

The command: parse the settings, plan the runs (:mod:`mmrec.experiments.plan`), run the missing
ones here or in worker processes (:mod:`mmrec.experiments.execute`) and write the tables
(:mod:`mmrec.experiments.report`, :mod:`mmrec.experiments.folds`)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mmrec.config import ConfigError
from mmrec.experiments.execute import (
    _describe,
    _test_metrics,
    adopt_runs,
    evaluate_baseline,
    execute,
    refit_and_test,
    train_and_test,
)
from mmrec.experiments.plan import (
    SUFFIX,
    ExperimentConfig,
    Run,
    _entry_args,
    _ks,
    _test_entry_args,
    _wandb,
    baseline_spec,
    build_baseline,
    check_settings,
    plan,
    refit_twins,
    slug,
)
from mmrec.experiments.store import ResultStore, code_label, current_code

__all__ = [
    "build_parser",
    "check_code",
    "config_from_args",
    "main",
    "run",
    "run_jobs",
    # moved to mmrec.experiments.plan and mmrec.experiments.execute, still importable here
    "SUFFIX",
    "ExperimentConfig",
    "Run",
    "_describe",
    "_entry_args",
    "_ks",
    "_test_entry_args",
    "_test_metrics",
    "_wandb",
    "adopt_runs",
    "baseline_spec",
    "build_baseline",
    "check_settings",
    "evaluate_baseline",
    "execute",
    "plan",
    "refit_and_test",
    "refit_twins",
    "slug",
    "train_and_test",
]


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
