"""Packed training batches: several users per row, kept apart, equal to the unpacked batch."""

from __future__ import annotations

import lightning as L
import polars as pl
import pytest
import torch

from mmrec.data.datamodule import AmazonDataModule
from mmrec.data.dataset import _first_fit_decreasing
from mmrec.encoders.base import EventEncoder
from mmrec.encoders.rating import RatingEncoder
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
from mmrec.encoders.user_context import UserContextEncoder
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.synthetic.dataset import make_synthetic_dataset

KEYS = ("item_ids", "timestamps", "query_time", "targets")


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    path = make_synthetic_dataset(
        tmp_path_factory.mktemp("pack") / "ds", num_users=90, num_items=40, max_events=60, seed=1
    )
    dm = AmazonDataModule(str(path), max_len=20, batch_size=32)
    dm.setup("fit")
    return dm


def _both(dm: AmazonDataModule, rows: list[int]) -> tuple[dict, dict]:
    ds = dm.datasets["train"]
    ds.pack = False
    plain = ds.__getitems__(rows)
    ds.pack = True
    packed = ds.__getitems__(rows)
    ds.pack = dm.pack_sequences
    return plain, packed


def _per_user(batch: dict, key: str, n: int, packed: bool) -> list[torch.Tensor]:
    if packed:
        return [batch[key][batch["segments"] == u + 1] for u in range(n)]
    return [batch[key][u][batch["mask"][u]] for u in range(n)]


def test_first_fit_decreasing_fills_bins_without_overlap():
    sizes = [7, 3, 5, 5, 2, 8, 1, 9]
    bin_of, offset = _first_fit_decreasing(sizes, 10)
    used: dict[int, set[int]] = {}
    for size, b, o in zip(sizes, bin_of, offset, strict=True):
        slots = set(range(o, o + size))
        assert o >= 0 and o + size <= 10 and not slots & used.get(b, set())
        used.setdefault(b, set()).update(slots)
    assert max(bin_of) + 1 == 4  # 40 slots in bins of 10: the optimum
    assert _first_fit_decreasing([10, 10], 10) == ([0, 1], [0, 0])


def test_packed_batch_holds_each_users_events_in_order(dm):
    rows = list(range(0, 64, 2))
    plain, packed = _both(dm, rows)
    n = len(rows)
    assert packed["item_ids"].shape[1] <= dm.max_len
    assert packed["mask"].numel() < plain["mask"].numel()  # fewer slots than the padded batch
    assert int(packed["mask"].sum()) == int(plain["mask"].sum())
    for key in (*KEYS, "ratings"):
        a, b = _per_user(plain, key, n, False), _per_user(packed, key, n, True)
        assert all(
            torch.equal(x.nan_to_num(-1), y.nan_to_num(-1)) for x, y in zip(a, b, strict=True)
        ), key
    for u in range(n):  # positions restart at 0 in every segment
        pos = packed["positions"][packed["segments"] == u + 1]
        assert torch.equal(pos, torch.arange(len(pos)))
    assert torch.equal(packed["user_idx"], plain["user_idx"])
    assert torch.equal(packed["loss_weight"], plain["loss_weight"])
    assert not packed["targets"][~packed["mask"]].any()  # padding slots are never trained on


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_hidden_states_and_loss_equal_unpacked(dm, attn):
    L.seed_everything(0)
    model = MMRecModule.for_data(
        dm,
        d_model=16,
        # no gates: the time features are not zero at initialisation
        event_encoders=[
            TimestampEncoder(gate_init=None),
            QueryTimeEncoder(gate_init=None),
            RatingEncoder(),
        ],
        sequence=GPT2Sequence(n_layer=2, n_head=2, dropout=0.0, attn_implementation=attn),
    ).eval()
    plain, packed = _both(dm, list(range(32)))
    _assert_same_per_user(model, plain, packed, 32)
    # the gap feature starts afresh at each segment: a user's first event has no predecessor
    enc = model.event_encoders[0]
    shifted = dict(packed, segments=torch.where(packed["mask"], 1, 0))  # one user per row
    with torch.no_grad():
        assert not torch.allclose(enc(packed), enc(shifted))


def _assert_same_per_user(model: MMRecModule, plain: dict, packed: dict, n: int) -> None:
    """Each user's hidden states and the batch loss are equal packed and unpadded."""
    with torch.no_grad():
        vecs = model.item_vectors()
        hp, hk = model.encode(plain, vecs), model.encode(packed, vecs)
        a = _per_user({"h": hp, "mask": plain["mask"]}, "h", n, False)
        b = _per_user({"h": hk, "segments": packed["segments"]}, "h", n, True)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
        losses = []
        for batch, hidden in ((plain, hp), (packed, hk)):
            keep = batch["targets"] > 0
            losses.append(model.loss(hidden[keep], batch["targets"][keep], vecs))
    torch.testing.assert_close(losses[0], losses[1])


def test_user_context_packed_equals_unpadded(tmp_path):
    """Segment s of a packed row gets user_idx[s - 1]'s context: same states and loss."""
    path = make_synthetic_dataset(
        tmp_path / "ds", num_users=60, num_items=40, max_events=40, seed=5
    )
    users = pl.read_parquet(path / "users.parquet").select("user_idx", "user_id")
    location = [["DE", "US", None, "JP"][u % 4] for u in range(users.height)]  # None: unknown
    users.with_columns(location=pl.Series(location)).write_parquet(path / "users.parquet")
    dm = AmazonDataModule(str(path), max_len=12, batch_size=32)
    dm.setup("fit")
    L.seed_everything(0)
    enc = UserContextEncoder(columns=["location"])
    model = MMRecModule.for_data(
        dm,
        d_model=16,
        event_encoders=[enc],
        sequence=GPT2Sequence(n_layer=2, n_head=2, dropout=0.0),
    ).eval()
    plain, packed = _both(dm, list(range(32)))
    assert packed["mask"].shape[0] < 32  # several users share a row
    with torch.no_grad():  # the context differs between users, so a mix-up would show
        ctx_plain = _per_user({"c": enc(plain), "mask": plain["mask"]}, "c", 32, False)
        ctx_packed = _per_user({"c": enc(packed), "segments": packed["segments"]}, "c", 32, True)
    assert len({tuple(c[0].tolist()) for c in ctx_plain}) == 4  # DE, US, JP, unknown
    for x, y in zip(ctx_plain, ctx_packed, strict=True):
        torch.testing.assert_close(x, y)
    _assert_same_per_user(model, plain, packed, 32)


class _OneUserPerRow(EventEncoder):
    """Reads ``user_idx`` per row, so it cannot take packed batches."""

    def build(self, ctx) -> None:
        super().build(ctx)
        self.seen: list[bool] = []

    def forward(self, batch):
        self.seen.append("segments" in batch)
        assert batch["user_idx"].shape[0] == batch["mask"].shape[0]
        return torch.zeros(*batch["mask"].shape, self.d_model)


def test_packed_batches_refused_for_an_encoder_that_needs_one_user_per_row(tmp_path):
    """The model never changes the datamodule behind the user's back: a clear error instead."""
    path = make_synthetic_dataset(tmp_path / "ds", num_users=60, num_items=40, seed=2)
    dm = AmazonDataModule(str(path), max_len=10, batch_size=16)
    assert dm.pack_sequences  # on by default
    model = MMRecModule.for_data(
        dm,
        d_model=16,
        event_encoders=[_OneUserPerRow()],
        sequence=GPT2Sequence(n_layer=1, n_head=2),
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    with pytest.raises(
        ValueError, match=r"_OneUserPerRow cannot take packed .*data.pack_sequences false"
    ):
        trainer.fit(model, datamodule=dm)
    assert dm.pack_sequences is True  # untouched
    dm = AmazonDataModule(str(path), max_len=10, batch_size=16, pack_sequences=False)
    enc = _OneUserPerRow()
    model = MMRecModule.for_data(
        dm, d_model=16, event_encoders=[enc], sequence=GPT2Sequence(n_layer=1, n_head=2)
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    assert enc.seen and not any(enc.seen)
