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
from mmrec.encoders.dynamics import ItemDynamics
from mmrec.encoders.item_id import ItemIdEncoder
from mmrec.encoders.term_cache import TermCache
from mmrec.fusion import Fusion, SumFusion
from mmrec.losses import FullSoftmaxCE, Loss
from mmrec.module_dynamics import DynamicsTerms
from mmrec.module_eval import RankingEvaluation
from mmrec.optim import lr_factor, split_decay
from mmrec.sequence import GPT2Sequence
from mmrec.sequence_base import SequenceHead

_COMPONENTS = ("item_encoders", "event_encoders", "fusion", "sequence", "loss", "dynamics")
_NOT_SAVED = (*_COMPONENTS, "trusted_modules")


class MMRecModule(DynamicsTerms, RankingEvaluation, L.LightningModule):
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
        hparams = checked_hparams(ckpt, checkpoint_path, trusted, model=MMRecModule)
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
        bias = self.dynamics_term(batch["query_time"][keep], batch["item_ids"][keep])  # [P, N + 1]
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
