"""Rolling-origin folds of `mmrec experiment`: one table per fold and one over the folds pooled
(every fold's test users together, so the paired tests see all of them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from mmrec.experiments.plan import ExperimentConfig, Run
    from mmrec.experiments.store import ResultStore

#: Pooled user ids: ``fold number * USER_OFFSET + user_idx`` (user ids of folds never meet).
USER_OFFSET = 10**9


class PooledStore:
    """Records of the folds' runs pooled per (variant, seed), read like a :class:`ResultStore`.

    The pooled per-user table is every fold's table with user ids made distinct per fold; the
    pooled test metrics are its means (each test user of each fold counts once), or the mean
    over folds for metrics without per-user values (coverage, novelty...).
    """

    def __init__(self, store: ResultStore, groups: dict[str, list[str | None]]) -> None:
        self.store, self.groups = store, groups  # pooled key -> the folds' keys (None: missing)

    def get(self, key: str) -> dict | None:
        records = [self.store.get(k) if k else None for k in self.groups[key]]
        if any(r is None for r in records):
            return None
        users = self.per_user(key)
        means = {
            c: float(users[c].mean()) for c in users.columns if c not in ("user_idx", "user_id")
        }
        test = {m: means.get(m, float(np.mean([r["test"].get(m, np.nan) for r in records])))
                for m in records[0]["test"]}  # fmt: skip
        first = records[0]
        return first | {
            "test": test,
            "val_ndcg@10": float(np.mean([r.get("val_ndcg@10", np.nan) for r in records])),
            "epochs": "+".join(str(r.get("epochs", 0)) for r in records),
            "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in records)),
            "folds": [r["key"] for r in records],
        }

    def per_user(self, key: str) -> pl.DataFrame:
        frames = []
        for i, k in enumerate(self.groups[key]):
            users = self.store.per_user(k).drop("user_id", strict=False)
            frames.append(users.with_columns(pl.col("user_idx").cast(pl.Int64) + i * USER_OFFSET))
        return pl.concat(frames, how="vertical_relaxed")


def pooled_runs(
    runs: list[Run], folds: list[str], store: ResultStore
) -> tuple[list[Run], PooledStore]:
    """One pooled run per (variant, seed) of the folds' runs, and the store that reads them."""
    groups: dict[str, list[str | None]] = {}
    pooled: dict[str, Run] = {}
    for run in runs:
        key = f"pooled:{run.variant}:{run.seed}"
        if key not in pooled:
            pooled[key] = dataclasses.replace(run, args=(), key=key, fold=None)
            groups[key] = [None] * len(folds)
        groups[key][folds.index(run.fold)] = run.key
    return list(pooled.values()), PooledStore(store, groups)


def write_fold_reports(
    cfg: ExperimentConfig, runs: list[Run], store: ResultStore, out: Path, command: str | None
) -> list[str]:
    """``<out>/<fold>/results.md`` of every fold and the pooled ``<out>/results.md``;
    returns the missing runs (named with their fold)."""
    from mmrec.experiments.plan import slug
    from mmrec.experiments.report import _protocol, write_report

    folds = list(cfg.folds)
    missing, described = [], []
    for fold in folds:
        mine = [r for r in runs if r.fold == fold]
        title = f"{cfg.name}, fold {fold}"
        missing += [
            f"{fold}: {m}" for m in write_report(cfg, mine, store, out / slug(fold), command, title)
        ]
        described.append(f"{fold}: {_protocol(mine)}")
    together, pooled = pooled_runs(runs, folds, store)
    protocol = (
        f"rolling origin, {len(folds)} folds pooled (each fold's test users once; tables per "
        f"fold in {', '.join(f'`{slug(f)}/`' for f in folds)}): " + "; ".join(described)
    )
    write_report(cfg, together, pooled, out, command, f"{cfg.name}, folds pooled", protocol)  # type: ignore[arg-type]
    return missing
