"""MMRecModule (LightningModule): pluggable encoders -> fusion -> GPT-2 head -> scores over the
whole catalogue."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mmrec.config import ConfigError, component_spec, instantiate
from mmrec.data.eventlog import EventLog
from mmrec.encoders.base import BuildContext, EventEncoder, ItemEncoder
from mmrec.encoders.dynamics import ItemDynamics, TermCache
from mmrec.encoders.item_id import ItemIdEncoder
from mmrec.fusion import Fusion, SumFusion
from mmrec.losses import FullSoftmaxCE, Loss
from mmrec.optim import lr_factor, split_decay
from mmrec.sequence import GPT2Sequence, SequenceHead

_COMPONENTS = ("item_encoders", "event_encoders", "fusion", "sequence", "loss", "dynamics")
_NOT_SAVED = (*_COMPONENTS, "trusted_modules")


class MMRecModule(L.LightningModule):
    """Sequential recommender: item tower + event encoders + GPT-2 head, scored against all items.

    The same item tower (item encoders fused into one vector per item) embeds history items
    and scores the whole catalogue, so items with content but no interactions can be scored.
    Item dynamics (optional) add a score term per item as of the query time, read from the
    dataset's event log (strictly before that time) in training, evaluation and serving.
    Components are built in ``__init__`` with the data's sizes, so optimisers and checkpoint
    loading see every parameter; the checkpoint's hyper-parameters hold each component's
    ``class_path``/``init_args``, so ``MMRecModule.load_from_checkpoint(path)`` alone rebuilds it.

    Args:
        num_items: Number of real items (ids 1..N); linked from the datamodule.
        num_users: Number of users; linked from the datamodule.
        data_dir: Prepared dataset folder (features, users.parquet); linked from the datamodule.
        time_granularity: ``"day"`` or ``"second"``; linked from the datamodule.
        max_len: Longest history the model accepts; linked from the datamodule.
        d_model: Width of item vectors, tokens and hidden states.
        item_encoders: Item-side encoders, fused into one vector per item (default: ItemIdEncoder).
        event_encoders: Event-side encoders whose outputs are added to each history token.
        fusion: How item encoder outputs are combined (default: SumFusion).
        sequence: The sequence head, a ``SequenceHead`` (default: GPT2Sequence()).
        loss: Training loss (default: FullSoftmaxCE).
        dynamics: Item dynamics whose score terms ``[Q, N + 1]``, computed from the event log
            strictly before each query time, are added to every item's score: each training
            target's at its own time (``query_time``), each evaluation row's at its target's
            time, predictions and ``mmrec recommend`` at the time asked for. The log is
            ``data_dir``'s (``set_event_log`` hands in a newer one). Default: none.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay on the weights of linear layers
            (``mmrec.optim.DECAYED_TYPES``);
            embeddings, norms, biases and free vectors are not decayed.
        warmup_steps: Linear learning-rate warm-up steps.
        lr_min_ratio: After warm-up: None keeps the learning rate constant; a ratio ``r``
            decays it along a cosine to ``r * lr`` at the end of training
            (``trainer.max_epochs`` or ``max_steps``).
        ks: Cut-offs of the ranking metrics, e.g. ``(10, 20)``.
        exclude_history: Mask the user's history items out of evaluation and predictions.
        predict_k: Items per user returned by ``predict``.
        test_slices: At test time also compute metrics per slice (target month, holiday window,
            history length, target popularity incl. items unseen in training = cold items), log
            their HR/NDCG@10 and write ``test_slices.csv`` and ``test_ndcg_by_month.png`` into
            the trainer's log folder.
        trusted_modules: Packages outside mmrec that a checkpoint's components may be imported
            from (importing runs code, so a checkpoint alone never imports them); modules your
            code or config imported already are always allowed. Not saved in checkpoints.
    """

    #: Memory for score-term rows of item dynamics reused between evaluation batches.
    dynamics_cache_mb: float = 256.0

    def __init__(
        self,
        num_items: int,
        num_users: int,
        data_dir: str | None = None,
        time_granularity: str | None = None,
        max_len: int = 50,
        d_model: int = 64,
        item_encoders: list[ItemEncoder] | None = None,
        event_encoders: list[EventEncoder] | None = None,
        fusion: Fusion | None = None,
        sequence: SequenceHead | None = None,
        loss: Loss | None = None,
        dynamics: list[ItemDynamics] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_min_ratio: float | None = None,
        ks: tuple[int, ...] = (10, 20),
        exclude_history: bool = True,
        predict_k: int = 10,
        test_slices: bool = True,
        trusted_modules: list[str] | None = None,
    ) -> None:
        super().__init__()
        # components arrive as instances (Python, CLI) or as specs (checkpoint hyper-parameters);
        # a spec may only name a subclass of its slot's base, checked before anything is called
        trust = list(trusted_modules or [])
        item_encoders = [
            instantiate(e, ItemEncoder, f"item_encoders[{i}]", trust)
            for i, e in enumerate(item_encoders or [])
        ] or [ItemIdEncoder()]
        event_encoders = [
            instantiate(e, EventEncoder, f"event_encoders[{i}]", trust)
            for i, e in enumerate(event_encoders or [])
        ]
        fusion = SumFusion() if fusion is None else instantiate(fusion, Fusion, "fusion", trust)
        sequence = (
            GPT2Sequence()
            if sequence is None
            else instantiate(sequence, SequenceHead, "sequence", trust)
        )
        loss = FullSoftmaxCE() if loss is None else instantiate(loss, Loss, "loss", trust)
        dynamics = [
            instantiate(d, ItemDynamics, f"dynamics[{i}]", trust)
            for i, d in enumerate(dynamics or [])
        ]
        self.save_hyperparameters(ignore=list(_NOT_SAVED))
        specs = {
            "item_encoders": [component_spec(e) for e in item_encoders],
            "event_encoders": [component_spec(e) for e in event_encoders],
            "fusion": component_spec(fusion),
            "sequence": component_spec(sequence),
            "loss": component_spec(loss),
            "dynamics": [component_spec(d) for d in dynamics],
        }
        self.hparams.update(specs)
        self._hparams_initial.update(specs)

        ctx = BuildContext(num_items, num_users, d_model, data_dir, time_granularity)
        for enc in [*item_encoders, *event_encoders, *dynamics]:
            enc.build(ctx)
        fusion.build(d_model, len(item_encoders))
        sequence.build(d_model, max_len)
        loss.build(num_items)
        self.item_encoders = nn.ModuleList(item_encoders)
        self.event_encoders = nn.ModuleList(event_encoders)
        self.dynamics = nn.ModuleList(dynamics)
        self._event_log: EventLog | None = None
        self._event_log_dir: str | None = None  # the folder it was read from (None: handed in)
        self._term_cache = TermCache()  # evaluation rows of the dynamics' term, by query time
        self.fusion, self.sequence, self.loss = fusion, sequence, loss
        self.num_items, self.ks, self.exclude_history = num_items, tuple(ks), exclude_history

        from mmrec.evaluation.metrics import RankingMetrics
        from mmrec.evaluation.slices import SlicedRankingMetrics

        self.val_metrics = RankingMetrics(ks=self.ks, prefix="val/")
        self.test_metrics = RankingMetrics(ks=self.ks, prefix="test/")
        self.test_slice_metrics = (
            SlicedRankingMetrics(ks=self.ks, prefix="test/") if test_slices else None
        )
        from mmrec.evaluation.beyond import BeyondAccuracy

        self.test_beyond = BeyondAccuracy(ks=self.ks, prefix="test/")
        self.slice_results: dict[str, float] = {}
        self._eval_item_vecs: Tensor | None = None
        self._pretrained_loaded = False

    @classmethod
    def for_data(cls, dm: Any, **kwargs: Any) -> MMRecModule:
        """A model sized for datamodule ``dm``: ``num_items``, ``num_users``, ``data_dir``,
        ``time_granularity`` and ``max_len`` come from it (as the CLI links them); ``kwargs``
        are the other constructor arguments."""
        return cls(
            num_items=dm.num_items,
            num_users=dm.num_users,
            data_dir=dm.data_dir,
            time_granularity=dm.time_granularity,
            max_len=dm.max_len,
            **kwargs,
        )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: str | torch.device | None = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> MMRecModule:
        """Rebuild a model from a checkpoint file alone, checking it before it can run code.

        The file is read as tensors and plain values only, and every class path its
        hyper-parameters name is checked against its slot before anything is imported
        (``trusted_modules`` widens that, as in ``__init__``). The model is then built by
        ``__init__`` itself: Lightning's stored ``_instantiator`` (jsonargparse, which imports
        each class path it is given) is never called.

        Args:
            checkpoint_path: A ``.ckpt`` written by ``mmrec fit`` or ``Trainer.save_checkpoint``.
            map_location: Device to move the model to (default: the CPU).
            hparams_file: A YAML file whose hyper-parameters replace the checkpoint's.
            strict: Whether the state dict must match the model exactly (default: the model's
                ``strict_loading``, True).
            weights_only: Must be True or None (the only way mmrec reads a checkpoint).
            **kwargs: Constructor arguments that override the checkpoint's
                (``data_dir``, ``trusted_modules``, evaluation options).

        Raises:
            ConfigError: The file is missing, unreadable, holds Python objects, or names a
                class outside its slot or an untrusted module; one line naming the file.
        """
        import yaml

        from mmrec.checkpoints import check_weights, checked_hparams, read_checkpoint

        if weights_only is False:
            raise ConfigError(
                "MMRecModule.load_from_checkpoint reads tensors and plain values only "
                "(weights_only=True): a checkpoint that needs more could run code when loaded"
            )
        ckpt = read_checkpoint(checkpoint_path)
        if hparams_file is not None:
            ckpt["hyper_parameters"] = yaml.safe_load(Path(hparams_file).read_text())
        trusted = list(kwargs.get("trusted_modules") or [])
        hparams = checked_hparams(ckpt, checkpoint_path, trusted)
        hparams.update(kwargs)
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        try:
            model = cls(**{k: v for k, v in hparams.items() if k in names})
        except ConfigError:
            raise
        except (TypeError, ValueError, RuntimeError, KeyError) as err:
            raise ConfigError(
                f"checkpoint {checkpoint_path}: its hyper-parameters do not build a model "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); a "
                "damaged or edited checkpoint? pass one written by `mmrec fit`"
            ) from None
        model.on_load_checkpoint(ckpt)
        strict = model.strict_loading if strict is None else strict
        if strict:
            check_weights(model, ckpt["state_dict"], checkpoint_path)
        model.load_state_dict(ckpt["state_dict"], strict=strict)
        if isinstance(map_location, (str, torch.device)):
            model = model.to(map_location)
        return model

    # ----------------------------------------------------------------------------- forward
    def item_vectors(self) -> Tensor:
        """The whole catalogue through the item tower: ``[N + 1, D]`` (row 0 is padding)."""
        return self.fusion([enc.all_items() for enc in self.item_encoders])

    def _tokens(self, batch: dict[str, Tensor], item_vecs: Tensor | None) -> Tensor:
        """Fused event tokens: item vectors plus every event encoder's output, ``[B, L, D]``."""
        if item_vecs is None:
            item_vecs = self.item_vectors()
        tokens = item_vecs[batch["item_ids"]]  # [B, L, D]
        for enc in self.event_encoders:
            out = enc(batch)
            if out.shape != tokens.shape:
                raise ValueError(
                    f"{type(enc).__name__} returned {tuple(out.shape)}, "
                    f"expected {tuple(tokens.shape)}"
                )
            tokens = tokens + out
        return tokens

    def encode(self, batch: dict[str, Tensor], item_vecs: Tensor | None = None) -> Tensor:
        """Hidden state after each history event: ``[B, L, D]``."""
        tokens = self._tokens(batch, item_vecs)
        if "segments" in batch:  # a packed training batch (AmazonDataModule pack_sequences)
            return self.sequence(tokens, batch["mask"], batch["segments"], batch["positions"])
        return self.sequence(tokens, batch["mask"])

    def user_vectors(self, batch: dict[str, Tensor], item_vecs: Tensor | None = None) -> Tensor:
        """Hidden state after the most recent event, ``encode(batch)[:, -1]``: ``[B, D]``.

        The evaluation and prediction path: ``SequenceHead.last`` (``GPT2Sequence`` computes
        only what the last position needs).
        """
        return self.sequence.last(self._tokens(batch, item_vecs), batch["mask"])

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """User vectors after the last (most recent) event: ``[B, D]``."""
        return self.user_vectors(batch)

    # ----------------------------------------------------------------------------- dynamics
    @property
    def event_log(self) -> EventLog:
        """The event log the item dynamics read: the one given to :meth:`set_event_log`, else
        that of the datamodule's folder (``setup``) or of ``data_dir`` (read on first use)."""
        if self._event_log is None:
            data_dir = self.hparams.get("data_dir")
            if not data_dir:
                raise ConfigError(
                    "this model's item dynamics need an event log: build it with data_dir (the "
                    "dataset folder) or hand one in with set_event_log(EventLog(...))"
                )
            self._event_log, self._event_log_dir = EventLog.from_folder(data_dir), str(data_dir)
        return self._event_log

    def set_event_log(self, log: EventLog) -> None:
        """Read item dynamics from ``log`` from now on (e.g. a newer log of the shop's events,
        without retraining); ``setup`` keeps it instead of reading the datamodule's."""
        if log.num_items != self.num_items:
            raise ConfigError(
                f"the event log has {log.num_items} items, the model {self.num_items}: map the "
                "events to this model's item indices"
            )
        self._event_log, self._event_log_dir = log, None
        self._term_cache.clear()  # rows of the old log's terms are stale

    def dynamics_term(self, t: Tensor) -> Tensor | None:
        """The dynamics' summed score term at query times ``t [Q]``: ``[Q, N + 1]``, computed
        once per distinct time (from events strictly before it); None without dynamics.

        Outside autograd (evaluation, prediction, serving) the rows of times already computed
        are reused while the dynamics' weights, device and event log stay the same, up to
        ``dynamics_cache_mb`` (least recently used rows go first): an evaluation epoch then
        computes each distinct query time about once, however its rows are batched.
        """
        if not len(self.dynamics):
            return None
        times, inverse = torch.unique(t, return_inverse=True)  # [T], [Q]
        inverse = inverse.reshape(-1)
        cols = self.num_items + 1
        if torch.is_grad_enabled() or len(times) > self._cache_capacity():
            term = self._term_of(times)  # [T, N + 1]
            return term.index_select(0, inverse.to(term.device)).view(*t.shape, cols)
        slots = self._cached_slots(times.tolist())  # [T] rows of the cache
        return self._term_cache.rows(slots[inverse.cpu()]).view(*t.shape, cols)

    def _cache_capacity(self) -> int:
        """Rows of the evaluation cache of dynamics terms (``dynamics_cache_mb``)."""
        return min(2**16, int(self.dynamics_cache_mb * 2**20) // (4 * (self.num_items + 1)))

    def _cached_slots(self, times: list[int]) -> Tensor:
        """Rows of the evaluation cache holding the term at ``times`` (distinct), computing
        the missing ones; the cache starts afresh when the dynamics' weights (an in-place
        update bumps a tensor's version), their device, the log or the inference mode change."""
        log, params = self.event_log, list(self.dynamics.parameters())
        key = (id(log), torch.is_inference_mode_enabled())
        key += tuple((p.device, p.data_ptr(), p._version) for p in params)
        return self._term_cache.slots(key, times, self._cache_capacity(), self._term_of)

    def _term_of(self, times: Tensor) -> Tensor:
        """``[T, N + 1]``: the dynamics' summed term at distinct times ``times [T]``."""
        log = self.event_log
        term = self.dynamics[0](log, times)
        for member in self.dynamics[1:]:
            term = term + member(log, times)
        return term

    @staticmethod
    def _row_times(batch: dict[str, Tensor]) -> Tensor:
        """``[B]`` query time of each evaluation / prediction row (its last slot's)."""
        t = batch.get("target_time")
        return batch["query_time"][:, -1] if t is None else t

    def _rank_call(self, fn: Any, batch: dict[str, Tensor], user_vecs: Tensor, *args: Any, **kw):
        """``fn(user_vecs, item_vecs, *rows, **kw)`` (``rank_targets`` / ``topk_items``) with
        the dynamics' term as of each row's query time added to its scores, chunk by chunk.
        The batch's distinct times are computed first, in one go (when they fit the cache),
        and rows go in query-time order, so that a chunk of users shares few of them; results
        come back in the batch's order."""
        if not len(self.dynamics):
            return fn(user_vecs, *args, **kw)
        times = self._row_times(batch)
        order = torch.argsort(times, stable=True)  # [B]
        ordered = times[order]
        distinct = torch.unique(times).tolist()
        if not torch.is_grad_enabled() and len(distinct) <= self._cache_capacity():
            self._cached_slots(distinct)  # the batch's times in one go

        def bias(lo: int, hi: int) -> Tensor:  # [hi - lo, N + 1]
            return self.dynamics_term(ordered[lo:hi]).float()

        item_vecs, rows = args[0], [a[order] if isinstance(a, Tensor) else a for a in args[1:]]
        out = fn(user_vecs[order], item_vecs, *rows, bias=bias, **kw)
        back = torch.argsort(order)
        return tuple(o[back] for o in out) if isinstance(out, tuple) else out[back]

    # ----------------------------------------------------------------------------- hooks
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        if getattr(dm, "num_items", self.num_items) != self.num_items:
            raise ConfigError(
                f"model has {self.num_items} items, data has {dm.num_items}: wrong checkpoint?"
            )
        if getattr(dm, "pack_sequences", False) and stage == "fit":
            unfit = [
                type(c).__name__
                for c in (*self.event_encoders, self.sequence)
                if not c.supports_packing
            ]
            if unfit:
                raise ConfigError(
                    f"{', '.join(unfit)} cannot take packed training batches (several users per "
                    "row): set data.pack_sequences false (--data.pack_sequences false)"
                )
        data_dir = getattr(dm, "data_dir", None)
        if len(self.dynamics) and data_dir and self._event_log_dir != str(data_dir):
            if self._event_log is None or self._event_log_dir is not None:  # keep a log handed in
                self._event_log, self._event_log_dir = EventLog.from_folder(data_dir), str(data_dir)
                self._term_cache.clear()
        counts = getattr(dm, "item_train_counts", None)
        if counts is not None:
            self.loss.set_item_counts(torch.as_tensor(counts))
            if self.test_slice_metrics is not None:
                self.test_slice_metrics.set_item_train_counts(torch.as_tensor(counts))
            self.test_beyond.set_item_train_counts(torch.as_tensor(counts))

    def configure_model(self) -> None:
        if (
            not self._pretrained_loaded
            and self._trainer is not None
            and self.trainer.state.fn == "fit"
        ):
            self.sequence.load_pretrained()
            self._pretrained_loaded = True

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's mean loss over its targets (before ``loss_weight``); with dynamics,
        each target's logits get the term as of its own time (``query_time``)."""
        item_vecs = self.item_vectors()
        hidden = self.encode(batch, item_vecs)  # [B, L, D]
        targets = batch["targets"]
        keep = targets > 0  # [B, L]
        bias = self.dynamics_term(batch["query_time"][keep])  # [P, N + 1] or None
        if bias is None:  # a loss written before dynamics existed takes no bias
            return self.loss(hidden[keep], targets[keep], item_vecs)
        return self.loss(hidden[keep], targets[keep], item_vecs, bias)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        targets = batch["targets"]
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=targets.shape[0],
        )
        weight = batch.get("loss_weight")  # per-position weighting across batches (datamodule)
        return loss if weight is None else loss * weight

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

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self._eval_item_vecs = None
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

    def configure_optimizers(self) -> Any:
        decay, no_decay = split_decay(self)
        lr = self.hparams.lr
        # item dynamics may learn faster than the rest (ItemDynamics.lr_scale)
        scale = {id(p): m.lr_scale for m in self.dynamics for p in m.parameters()}
        groups = [
            {"params": [p for p in params if scale.get(id(p), 1.0) == s], "lr": lr * s,
             "weight_decay": wd}
            for params, wd in ((decay, self.hparams.weight_decay), (no_decay, 0.0))
            for s in sorted({1.0, *scale.values()})
        ]  # fmt: skip
        groups = [g for g in groups if g["params"]]
        fused = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=lr, fused=fused)
        warmup = max(int(self.hparams.warmup_steps), 0)
        ratio = self.hparams.get("lr_min_ratio")
        if not warmup and ratio is None:
            return optimizer
        total = None
        if ratio is not None:
            total = int(self.trainer.estimated_stepping_batches)
            if not 0 <= ratio <= 1:
                raise ConfigError(f"lr_min_ratio must be within [0, 1], got {ratio}")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(lr_factor, warmup=warmup, total=total, ratio=ratio)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
