"""Prediction writer: each user's top-K items (original ids and scores) to a parquet file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class TopKWriter(BasePredictionWriter):
    """Writes ``predict`` outputs as one row per user: ids, top-K items, scores.

    Columns: ``user_idx``, ``user_id``, ``item_idx`` (list), ``item_id`` (list), ``score``
    (list), best first. Original ids come from the dataset's ``users.parquet``/``items.parquet``.
    Under DDP each rank writes ``<stem>.rank<r>.parquet``.

    Args:
        output: Parquet file to write; None writes ``predictions.parquet`` in the trainer's
            log directory (or ``default_root_dir``).
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.written: Path | None = None

    def _path(self, trainer: L.Trainer) -> Path:
        path = (
            Path(self.output)
            if self.output
            else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.parquet"
        )
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders
            predictions = [p for group in predictions for p in group]
        if not predictions:
            return
        users = torch.cat([p["user_idx"] for p in predictions]).cpu().numpy()
        items = torch.cat([p["items"] for p in predictions]).cpu().numpy()
        scores = torch.cat([p["scores"] for p in predictions]).float().cpu().numpy()
        order = np.argsort(users, kind="stable")  # loaders may visit users in any order
        users, items, scores = users[order], items[order], scores[order]
        frame = pl.DataFrame(
            {
                "user_idx": users.astype("int32"),
                "item_idx": items.astype("int32").tolist(),
                "score": scores.tolist(),
            }
        )
        data_dir = getattr(
            getattr(trainer, "datamodule", None), "data_dir", None
        ) or pl_module.hparams.get("data_dir")
        if data_dir and (Path(data_dir) / "items.parquet").exists():
            item_ids = pl.read_parquet(
                Path(data_dir) / "items.parquet", columns=["item_idx", "item_id"]
            )
            lookup = dict(
                zip(item_ids["item_idx"].to_list(), item_ids["item_id"].to_list(), strict=True)
            )
            frame = frame.with_columns(
                pl.Series(
                    "item_id",
                    [[lookup.get(int(i)) for i in row] for row in items],
                    dtype=pl.List(pl.Utf8),
                )
            )
            user_ids = pl.read_parquet(
                Path(data_dir) / "users.parquet", columns=["user_idx", "user_id"]
            )
            frame = frame.join(user_ids.cast({"user_idx": pl.Int32}), on="user_idx", how="left")
        cols = [
            c for c in ("user_idx", "user_id", "item_idx", "item_id", "score") if c in frame.columns
        ]
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.select(cols).write_parquet(path)
        self.written = path
        print(f"wrote top-{items.shape[1]} items for {len(frame)} users to {path}")
