"""What ``mmrec test`` writes besides its metrics: per-user results, the slice table and the
month plot (and both to W&B when it is on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor


def _stack(rows: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Users ``[U]`` and ranks ``[U, T]`` of several batches (ranks padded with ``inf``)."""
    width = max(r.shape[1] for _, r in rows)
    users = torch.cat([u for u, _ in rows])
    ranks = torch.cat(
        [torch.nn.functional.pad(r, (0, width - r.shape[1]), value=float("inf")) for _, r in rows]
    )
    return users, ranks


def write_per_user(
    rows: list[tuple[Tensor, Tensor]], ks: Any, trainer: L.Trainer | None, data_dir: str | None
):
    """One row per test user (``user_idx``, ``user_id``, ``num_targets``, ``first_rank`` and
    every metric of the test table) as a polars DataFrame; rank 0 writes it to
    ``test_per_user.parquet`` in the log folder, for paired significance tests
    (``mmrec experiment``) or one's own analysis. Under DDP every process's users are gathered
    first, so each user is in the table once.

    Args:
        rows: ``(user_idx [B], ranks [B, T])`` of each test batch of this process.
        ks: Cut-offs of the metrics.
        trainer: The trainer (None: nothing is written, the table is returned).
        data_dir: The dataset folder, for the user ids.
    """
    from mmrec.evaluation.metrics import per_user_table

    if not rows:
        return None
    users, ranks = _stack(rows)
    if trainer is None:
        return per_user_table(users, ranks, ks)
    if trainer.world_size > 1:
        shards: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(shards, (users, ranks))
        users, ranks = _stack(shards)
    out = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP
    table = per_user_table(users, ranks, ks, data_dir)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        table.write_parquet(out / "test_per_user.parquet")
    return table


def write_slices(results: dict[str, float], trainer: L.Trainer, metric: str) -> None:
    """``test_slices.csv`` and ``test_ndcg_by_month.png`` in the log folder (rank 0), and both
    to every W&B logger of the trainer."""
    from mmrec.evaluation.slices import plot_metric_by_month, write_slices_csv

    out = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP
    if not trainer.is_global_zero:
        return
    table = write_slices_csv(results, out / "test_slices.csv")
    plot = None
    try:
        plot = plot_metric_by_month(results, out / "test_ndcg_by_month.png", metric)
    except ValueError as err:  # no dated targets (e.g. synthetic data without timestamps)
        rank_zero_info(f"test_ndcg_by_month.png not drawn: {err}")
    _log_to_wandb(trainer, table, plot)


def _log_to_wandb(trainer: L.Trainer, table: Path, plot: Path | None) -> None:
    """The slice table and the month plot, to every W&B logger of the trainer."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import polars as pl

        frame = pl.read_csv(table)
        logger.log_table("test/slices", columns=frame.columns, data=frame.rows())
        if plot is not None:
            logger.log_image("test/ndcg_by_month", images=[str(plot)])
