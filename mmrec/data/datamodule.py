"""AmazonDataModule: a dataset folder -> batch dicts (causal training, leakage-free eval)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from mmrec.calendar import DAY, to_unix
from mmrec.data.dataset import SequenceDataset, _identity, _Rows
from mmrec.data.rows import (
    SPLIT_CODES,
    _flat_events,
    _make_rows,
    _one_shot_rows,
    _read_interactions,
    _split_codes,
    _successive_rows,
    _train_rows,
)
from mmrec.data.samplers import LengthBucketSampler, UnpaddedDistributedSampler, _dist_world
from mmrec.ingest.settings import PrepareConfig

__all__ = ["AmazonDataModule", "SPLIT_CODES"]


class AmazonDataModule(LightningDataModule):
    """Batches of the dataset folder written by ``mmrec prepare`` (see DESIGN.md).

    Training: one row per user with at least 2 training events: the most recent
    ``max_len + 1`` training events, inputs ``events[:-1]``, ``targets = events[1:]`` (next item
    at every position), ``query_time`` = the next event's timestamp. Older events of long
    histories are not trained on (one window per user and epoch). With ``prefix_samples``:
    one row per training target instead, its preceding events, the loss at the last position.
    Validation / test (``eval_protocol="one_shot"``): one row per user with targets in that
    split and a non-empty history. The history is every event before the targets (valid: train
    events; test: train + valid events; for a temporal split, events before the cut-off), its
    last ``max_len`` events form the sequence, the last position's ``query_time`` is the
    (first) target's timestamp, and ``exclude_items`` holds every distinct item of the whole
    history. Targets (several per user in a temporal split) are deduplicated. Users whose
    targets have no history are skipped and counted in ``self.skipped``.
    ``eval_protocol="successive"``: one row per target event instead (see the argument).
    Predict: one row per user with all of their events as history; the last ``query_time``
    (and ``target_time``) is ``predict_time``; ``target_items`` is a ``[B, 1]`` of zeros.

    Batches are gathered from flat tensors built once in ``setup()``; no per-event Python.
    DDP: training uses a seeded ``LengthBucketSampler`` (a ``DistributedSampler``; padding is
    harmless there); val/test/predict use ``UnpaddedDistributedSampler`` so no user is scored
    twice. Both are ``DistributedSampler`` instances, so Lightning never replaces them, whatever
    ``trainer.use_distributed_sampler`` is set to. The keys, shapes and padding of the batch
    dicts: ``mmrec.data.batch.Batch``.

    Args:
        data_dir: The prepared dataset folder (``interactions.parquet``, ``meta.json``...).
        prepare: How ``data_dir`` is made (``mmrec prepare`` settings; ``out`` is
            ``data_dir``): the folder is prepared when missing, checked against these settings
            and inputs when present (a folder made with other ones is an error that names the
            difference). In YAML, the path of a ``configs/data/*.yaml`` file works too. Unset
            (no ``source``) or null (``--data.prepare null``, over a config that names one: a
            folder prepared elsewhere): no preparation, the folder must exist with its
            ``meta.json``.
        max_len: Sequence length ``L`` (history window), left-padded.
        batch_size: Training batch size.
        eval_batch_size: Validation / test / predict batch size.
        num_workers: DataLoader worker processes (0: batches are built in the main process,
            which is already fast).
        pin_memory: Pin batch memory (for GPU training).
        seed: Seed of the training shuffle (epoch ``e`` uses ``seed + e``).
        exclude_history: Fill ``exclude_items`` with the user's history items (evaluation then
            masks them out); False gives a ``[B, 1]`` of zeros.
        predict_time: Query time of the predict loader: unix seconds or an ISO date
            (``"2014-12-20"``, UTC); None: each user's last event time plus one day.
        trim_padding: Make each batch only as wide as its longest history (at most
            ``max_len``) instead of always ``max_len``; the model sees the same events.
        bucket_window: 1 (default): plain shuffled training batches. ``w > 1``: batches are
            cut from windows of ``w`` batches of shuffled rows sorted by history length, so a
            batch holds similar lengths and, trimmed, little padding; every row is still used
            once per epoch and each batch's loss is weighted by its share of positions. Faster
            (Beauty 2014 epoch on 2 CPU cores: 33 s plain, 19 s at w=4, 16 s at w=50) but the
            batches are less random, which cost accuracy on a small set (2023 All_Beauty, ID
            only, 3 seeds: test NDCG@10 0.064 plain, 0.053 at w=50) and on Beauty 2014
            (history not excluded: validation NDCG@10 stalls at 0.0486 at w=50, plain passes
            0.050 at epoch 16). Measure before using it.
        pack_sequences: Pack each training batch's users into shared rows of ``max_len``
            (segments the model keeps apart: each user's hidden states and loss terms are those
            of the unpacked batch; same users per step, same shuffling). Faster where
            histories are short (Beauty 2014: most slots of a plain batch are padding). The
            model refuses to train on packed rows when a component does not support them
            (set this False then).
        prefix_samples: Train on every prefix of each user's training events as its own row
            (the recipe of SASRec re-implementations such as BSARec's and RecBole's): one row
            per training target, holding the events before it (the last ``max_len``), with the
            loss at its last position only. Each prefix then gets its own dropout draw and is
            read from the position the evaluated query has (the newest event). False
            (default): one row per user, its most recent window, with a loss at every position.
            Same targets and softmax cost per epoch; the sequence model reads more events
            (Beauty 2014: 1.10M instead of 0.13M, 8.6x) and an epoch takes more steps.
        eval_protocol: How validation and test rows are cut (training and predict rows are
            the same under both). ``one_shot`` (default): each user's split items predicted
            once, at the user's first event of the split, from the events before the split
            (the rows above). ``successive`` (streaming): every event of the split is a
            target of its own row (a repeated (user, item) within the split counts once, at
            its first event), predicted from everything before it: the user's events before
            it, earlier events of the same split included, form the history, ``query_time``
            and ``target_time`` are the target's own timestamp, and ``exclude_items`` holds
            the history's items; the weights stay as trained (as in a shop between
            retrains). "Before" is the order of the dataset (user, time, then file order):
            the user's own events of the target's day (same timestamp, day-granular data)
            that come earlier in the file are history, later ones are not. Anything read from
            the global event log for a row (item dynamics, recency baselines) counts only
            events with a timestamp strictly before the target's time, so other users'
            events of that day are never seen. Targets at a user's first event have no
            history: skipped and counted in ``self.skipped`` (targets, not users). Under
            leave-one-out both protocols give the same rows.
        fit_on_valid: Refit before test: train on the training and validation events
            together (each user's window then ends at their last validation event) and leave
            the validation rows empty; the test rows are unchanged. For training again, for
            the number of epochs chosen on validation, up to the start of the test window, as
            a deployed system retrains up to the present (``mmrec experiment`` with
            ``refit: true``). Popularity counts (``item_train_counts``) include the
            validation events too.
    """

    def __init__(
        self,
        data_dir: str,
        prepare: PrepareConfig | None = PrepareConfig(),  # noqa: B008 (never mutated)
        max_len: int = 50,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        exclude_history: bool = True,
        predict_time: int | str | None = None,
        trim_padding: bool = True,
        bucket_window: int = 1,
        pack_sequences: bool = True,
        prefix_samples: bool = False,
        eval_protocol: Literal["one_shot", "successive"] = "one_shot",
        fit_on_valid: bool = False,
    ):
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        # plain values only, so that checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["prepare"])
        self.hparams["prepare"] = dataclasses.asdict(prepare) if prepare is not None else None
        self.data_dir = str(data_dir)
        self.prepare = prepare
        self.max_len, self.batch_size, self.eval_batch_size = max_len, batch_size, eval_batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.exclude_history = exclude_history
        if bucket_window < 1:
            raise ValueError(
                f"bucket_window must be >= 1 (1: no length bucketing), got {bucket_window}"
            )
        self.trim_padding, self.bucket_window = trim_padding, bucket_window
        self.pack_sequences = pack_sequences
        self.prefix_samples = prefix_samples
        if eval_protocol not in ("one_shot", "successive"):
            raise ValueError(
                f"eval_protocol must be 'one_shot' or 'successive', got {eval_protocol!r}"
            )
        self.eval_protocol = eval_protocol
        self.fit_on_valid = fit_on_valid
        self.predict_time = to_unix(predict_time, name="predict_time")
        self._meta: dict[str, Any] | None = None
        self._prepare_checked = False
        self._items: pl.DataFrame | None = None
        self._users: pl.DataFrame | None = None
        self.datasets: dict[str, SequenceDataset] = {}
        self.skipped: dict[str, dict[str, int]] = {}
        self._item_train_counts: Tensor | None = None

    # ------------------------------------------------------------------ folder and meta
    @property
    def meta(self) -> dict[str, Any]:
        """``meta.json`` of the folder (running ``prepare`` first when configured and missing)."""
        if self._meta is None:
            self.prepare_data()
            self._meta = json.loads((Path(self.data_dir) / "meta.json").read_text())
        return self._meta

    @property
    def num_items(self) -> int:
        """Number of real items (ids ``1..num_items``; 0 is padding)."""
        return int(self.meta["num_items"])

    @property
    def num_users(self) -> int:
        """Number of users (ids ``0..num_users-1``)."""
        return int(self.meta["num_users"])

    @property
    def time_granularity(self) -> str:
        """``"day"`` or ``"second"`` (meta.json)."""
        return str(self.meta.get("time_granularity", "second"))

    def protocol_description(self) -> str:
        """The split and evaluation protocol in words, for a results table, e.g.
        ``"temporal (valid from 2013-11-01, test from 2013-12-01 to 2014-01-01), successive"``
        or ``"leave-one-out"`` (where both evaluation protocols give the same rows)."""
        split = self.meta.get("split", {})
        if split.get("protocol") != "temporal":
            return "leave-one-out" if split.get("protocol") == "loo" else str(split.get("protocol"))
        test = f"test from {split.get('test_start')}"
        test += f" to {split['test_end']}" if split.get("test_end") else ""
        eval_words = self.eval_protocol.replace("_", "-")
        refit = ", refit on train + valid" if self.fit_on_valid else ""
        return f"temporal (valid from {split.get('valid_start')}, {test}), {eval_words}{refit}"

    @property
    def items(self) -> pl.DataFrame:
        """``items.parquet`` (read on first use)."""
        if self._items is None:
            self._items = pl.read_parquet(Path(self.data_dir) / "items.parquet")
        return self._items

    @property
    def users(self) -> pl.DataFrame:
        """``users.parquet`` (read on first use)."""
        if self._users is None:
            self._users = pl.read_parquet(Path(self.data_dir) / "users.parquet")
        return self._users

    @property
    def item_train_counts(self) -> Tensor:
        """Training events per item, ``[num_items + 1]`` int64 (index 0 = padding = 0)."""
        if self._item_train_counts is None:
            self.setup()
        return self._item_train_counts

    def prepare_data(self) -> None:
        """Checks the dataset folder against ``prepare`` (once): prepares it when missing or
        incomplete, passes when it was made with these settings and inputs, and stops with a
        message naming what differs otherwise (never trains on a folder made with other
        settings). Without a ``prepare`` config the folder must exist with its ``meta.json``."""
        out = Path(self.data_dir)
        if self._prepare_checked:
            return
        if self.prepare is not None and self.prepare.source is not None:
            from mmrec.ingest.prepare import prepare_dataset

            prepare_dataset(dataclasses.replace(self.prepare, out=str(out)))
            self._prepare_checked = True
            return
        if not (out / "meta.json").exists():
            raise FileNotFoundError(
                f"dataset folder {out} has no meta.json (missing or incomplete). Build it first "
                f"with `mmrec prepare --config configs/data/<dataset>.yaml --out {out}`, or give "
                "the datamodule a `prepare:` config so that it prepares the folder itself."
            )
        self._prepare_checked = True

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Reads the interactions once and builds the rows of every split (idempotent)."""
        if self.datasets:
            return
        path = Path(self.data_dir) / "interactions.parquet"
        num_items, num_users = self.num_items, self.num_users
        df = _read_interactions(path)
        u, items, ts = (
            df[c].to_numpy().astype(np.int64) for c in ("user_idx", "item_idx", "timestamp")
        )  # [N] each
        if len(items) and (items.min() < 1 or items.max() > num_items or u.max() >= num_users):
            raise ValueError(
                f"{path}: item_idx must be in 1..{num_items} and user_idx in 0..{num_users - 1} "
                "(meta.json); the folder is inconsistent, re-run `mmrec prepare`"
            )
        code = _split_codes(path, df["split"], u)
        key = u * (num_items + 1) + items  # [N] (user, item) pair
        self._events = _flat_events(df, items, key)
        self._item_train_counts = torch.from_numpy(
            np.bincount(items[code <= self._last_fit_split], minlength=num_items + 1).astype(
                np.int64
            )
        )
        self._build_datasets(u, items, ts, code, key)

    @property
    def _last_fit_split(self) -> int:
        """The last split code trained on: 0 (train), or 1 (valid) with ``fit_on_valid``."""
        return 1 if self.fit_on_valid else 0

    def _build_datasets(
        self, u: np.ndarray, items: np.ndarray, ts: np.ndarray, code: np.ndarray, key: np.ndarray
    ) -> None:
        """The training, validation, test and predict rows of the ``[N]`` flat events."""
        count = np.bincount(u, minlength=self.num_users)  # [U] events per user
        start = np.concatenate([[0], np.cumsum(count)[:-1]])  # [U] flat index of the first
        n = [np.bincount(u[code == c], minlength=self.num_users) for c in range(3)]  # per split
        n_fit = n[0] + (n[1] if self.fit_on_valid else 0)  # [U] training (+ valid) events
        rows = _train_rows(start, n_fit, ts, self.prefix_samples)
        self.datasets["train"] = SequenceDataset(
            self._events,
            rows,
            self.max_len,
            train=True,
            trim=self.trim_padding,
            last_only=self.prefix_samples,
        )
        tgt_first = pl.Series(key * 3 + code).is_first_distinct().to_numpy()  # dedup targets
        for name, c in (("valid", 1), ("test", 2)):
            sel = (code == c) & tgt_first  # [N] the split's targets
            if c == 1 and self.fit_on_valid:  # trained on: nothing left to validate
                none = np.zeros(0, np.int64)
                rows = _make_rows(none, none, none, none, (none, none, none))
                self.skipped[name] = {"fit_on_valid": int(np.sum(sel))}
            elif self.eval_protocol == "successive":
                rows, self.skipped[name] = _successive_rows(sel, u, items, ts, start)
            else:
                rows, self.skipped[name] = _one_shot_rows(c, sel, n, u, items, ts, start)
            self.datasets[name] = self._eval_set(rows)
        users = np.flatnonzero(count > 0)
        end = start[users] + count[users]
        if self.predict_time is None:
            qlast = ts[end - 1] + DAY
        else:
            qlast = np.full(len(users), self.predict_time)
        self.datasets["predict"] = self._eval_set(_make_rows(users, start[users], end, qlast))

    def _eval_set(self, rows: _Rows) -> SequenceDataset:
        return SequenceDataset(
            self._events, rows, self.max_len, False, self.exclude_history, self.trim_padding
        )

    # ------------------------------------------------------------------ loaders
    def _loader(self, name: str, sampler: DistributedSampler, batch_size: int) -> DataLoader:
        self.setup()
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=_identity,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # the loader's own generator draws each iterator's base seed, so starting an epoch
            # (or a validation) takes nothing from torch's global generator: dropout draws are
            # then the same in a fit resumed from a checkpoint as in the uninterrupted fit
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training rows, length-bucketed (sharded over ranks under DDP; epoch ``e``
        uses ``seed+e``)."""
        self.setup()
        world, rank = _dist_world()
        self.datasets["train"].pack = self.pack_sequences  # the constructor argument
        sampler = LengthBucketSampler(
            self.datasets["train"],
            self.batch_size,
            self.bucket_window,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
        )
        return self._loader("train", sampler, self.batch_size)

    def _eval_loader(self, name: str) -> DataLoader:
        self.setup()
        ds = self.datasets[name]
        lengths = ds.lengths() if self.trim_padding else None  # shortest first: less padding
        sampler = UnpaddedDistributedSampler(ds, lengths=lengths)
        return self._loader(name, sampler, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        """Validation rows (shortest history first when trimming), one disjoint shard per rank."""
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        """Test rows (shortest history first when trimming), one disjoint shard per rank."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Every user with events, history = all events, one disjoint shard per rank."""
        return self._eval_loader("predict")
