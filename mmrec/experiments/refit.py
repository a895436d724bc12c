"""Refit before test in `mmrec experiment`: each model run trained again on train + valid for
the epochs its validation chose, then tested, as a deployed system retrains up to the present."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from mmrec.experiments.experiment import ExperimentConfig, Run
    from mmrec.experiments.store import ResultStore

#: Appended to a variant's name for its refit twin in the tables.
SUFFIX = " (refit)"


def refit_twins(runs: list[Run]) -> list[Run]:
    """A refit twin of every model run: the same options plus ``data.fit_on_valid`` (its epoch
    count comes from the original's stored best epoch when it runs). Its key is derived from
    the original's, which its resolved config (and so its epoch count) determines."""
    from mmrec.experiments.store import run_key

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


def refit_and_test(
    run: Run, cfg: ExperimentConfig, store: ResultStore
) -> tuple[dict[str, Any], pl.DataFrame] | None:
    """Train ``run`` (a refit twin) for its original's best epoch + 1 epochs on train + valid
    and test the result; None while the original has no stored result."""
    from mmrec.experiments.experiment import _test_metrics, _wandb
    from mmrec.experiments.tracking import run_tracked

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
