"""Evaluation in :class:`~mmrec.module.MMRecModule`: validation and test ranking over the whole
catalogue (metrics, slices, beyond-accuracy), the per-user and per-slice outputs of a test, and
top-K predictions."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RankingEvaluation:
    """The validation, test and predict steps of :class:`~mmrec.module.MMRecModule` (a mixin: it
    reads the module's metrics, ``ks``, ``exclude_history`` and ``hparams``, set in
    ``MMRecModule.__init__``, and ranks through its ``_rank_call``)."""

    def _eval_vecs(self) -> Tensor:
        if self._eval_item_vecs is None:
            self._eval_item_vecs = self.item_vectors()
        return self._eval_item_vecs

    def _eval_step(
        self, batch: dict[str, Tensor], metrics: nn.Module, slices: nn.Module | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rank the batch's targets over the whole catalogue and update the metrics;
        returns the ranks ``[B, T]``, the user vectors ``[B, D]`` and item vectors."""
        from mmrec.evaluation import rank_targets

        item_vecs = self._eval_vecs()
        user_vecs = self.user_vectors(batch, item_vecs)  # [B, D]
        targets = batch["target_items"]  # [B, T]
        with torch.autocast(user_vecs.device.type, enabled=False):  # rank in fp32, not bf16
            ranks = self._rank_call(
                rank_targets,
                batch,
                user_vecs.float(),
                item_vecs.float(),
                targets,
                batch.get("exclude_items"),
                exclude_history=self.exclude_history,
            )
        metrics.update(ranks)  # counts finite ranks: repeated targets are not double-counted
        if slices is not None and "target_time" in batch and "history_len" in batch:
            slices.update(ranks, batch["target_time"], batch["history_len"], targets)
        return ranks, user_vecs, item_vecs

    def _eval_epoch_end(self, metrics: nn.Module) -> None:
        self._eval_item_vecs = None
        values = metrics.compute()
        self.log_dict(
            {k: torch.as_tensor(v, dtype=torch.float32) for k, v in values.items()}, sync_dist=False
        )
        metrics.reset()

    def on_validation_epoch_start(self) -> None:
        self._eval_item_vecs = None
        self._prefetch_loaders(self.trainer.val_dataloaders if self._trainer is not None else None)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self._eval_item_vecs = None
        self._prefetch_loaders(self.trainer.test_dataloaders if self._trainer is not None else None)
        self._test_users: list[tuple[Tensor, Tensor]] = []

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        from mmrec.evaluation import topk_items

        ranks, user_vecs, item_vecs = self._eval_step(
            batch, self.test_metrics, self.test_slice_metrics
        )
        self._test_users.append((batch["user_idx"].detach().cpu(), ranks.detach().cpu()))
        if self.test_beyond.ready:  # coverage and popularity of the top-K lists
            exclude = batch.get("exclude_items") if self.exclude_history else None
            with torch.autocast(user_vecs.device.type, enabled=False):
                _, top = self._rank_call(
                    topk_items, batch, user_vecs.float(), item_vecs.float(), max(self.ks), exclude
                )
            self.test_beyond.update(top)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_metrics)
        if self.test_beyond.ready:
            self._eval_epoch_end(self.test_beyond)
        self._write_per_user()
        if self.test_slice_metrics is not None:
            self._write_slices(self.test_slice_metrics)

    def _write_per_user(self) -> None:
        """``test_per_user.parquet`` (see :func:`mmrec.evaluation.outputs.write_per_user`);
        also kept as ``self.per_user``."""
        from mmrec.evaluation.outputs import write_per_user

        rows, self._test_users = self._test_users, []
        self.per_user = write_per_user(rows, self.ks, self._trainer, self.hparams.get("data_dir"))

    def _write_slices(self, slices: nn.Module) -> None:
        """Log HR/NDCG@10 (and users) per slice; the table and month plot are written by
        :func:`mmrec.evaluation.outputs.write_slices`."""
        from mmrec.evaluation.outputs import write_slices

        results = {k: float(v) for k, v in slices.compute().items()}
        slices.reset()
        self.slice_results = results
        if not results:
            return
        k = min(self.ks)
        shown = {
            key: torch.tensor(v)
            for key, v in results.items()
            if key.endswith((f"/ndcg@{k}", f"/hr@{k}"))
        }
        self.log_dict(shown, sync_dist=False)
        if self._trainer is not None:
            write_slices(results, self.trainer, f"ndcg@{k}")

    def on_predict_epoch_start(self) -> None:
        self._eval_item_vecs = None

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Top-``predict_k`` items per user: ``user_idx [B]``, ``items [B, K]``,
        ``scores [B, K]``."""
        from mmrec.evaluation import topk_items

        item_vecs = self._eval_vecs()
        user_vecs = self.user_vectors(batch, item_vecs)
        exclude = batch.get("exclude_items") if self.exclude_history else None
        with torch.autocast(user_vecs.device.type, enabled=False):
            scores, items = self._rank_call(
                topk_items,
                batch,
                user_vecs.float(),
                item_vecs.float(),
                self.hparams.predict_k,
                exclude,
            )
        return {"user_idx": batch["user_idx"], "items": items, "scores": scores}
