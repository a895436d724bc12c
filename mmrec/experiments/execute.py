"""Running the plan of `mmrec experiment`: each missing run trained and tested (or tested from
a stored training, adopted from a run folder, refit on train + valid, or a baseline fitted and
evaluated), and its result stored under its key."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import polars as pl

from mmrec.config import ConfigError
from mmrec.experiments.plan import ExperimentConfig, Run, _ks, _wandb, build_baseline
from mmrec.experiments.store import ResultStore, current_code, run_key
from mmrec.experiments.tracking import run_tracked


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


def refit_and_test(
    run: Run, cfg: ExperimentConfig, store: ResultStore
) -> tuple[dict[str, Any], pl.DataFrame] | None:
    """Train ``run`` (a refit twin) for its original's best epoch + 1 epochs on train + valid
    and test the result; None while the original has no stored result."""
    original = store.get(run.refit_of)
    if original is None or "best_epoch" not in original:
        return None
    epochs = int(original["best_epoch"]) + 1
    args = [*run.args, f"--trainer.max_epochs={epochs}"]
    start = time.perf_counter()
    fit = run_tracked(["fit", *args], cfg.name, _wandb(run, cfg))
    train_s = time.perf_counter() - start
    last = fit.trainer.checkpoint_callback.best_model_path  # no monitor: the last epoch
    test = run_tracked(
        ["test", *args, *run.test_args, f"--ckpt_path={last}"], cfg.name, _wandb(run, cfg)
    )
    record = {
        "test": _test_metrics(test),
        "val_ndcg@10": float(original["val_ndcg@10"]),  # what chose the epoch count
        "best_epoch": epochs - 1,
        "epochs": epochs,
        "train_seconds": round(train_s, 1),
        "run_folder": str(fit.run.folder),
        "refit_of": run.refit_of,
    }
    return record, test.model.per_user
