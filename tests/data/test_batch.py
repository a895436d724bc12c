"""The batch contract: event_rows, one declaration of per-event fields, serving's one-row batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mmrec.data import batch as contract
from mmrec.data.batch import EVENT_FIELDS, Batch, EventField, history_batch
from mmrec.data.datamodule import AmazonDataModule
from mmrec.ingest.prepare import PrepareConfig, prepare_dataset
from mmrec.synthetic.dataset import make_synthetic_dataset

SPLITS = ("valid", "test", "predict")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("contract") / "ds",
        num_users=60,
        num_items=50,
        max_events=30,
        seed=4,
    )


def all_batches(dm: AmazonDataModule) -> dict[str, dict]:
    """One batch of every loader: padded and packed training, valid, test, predict."""
    dm.setup()
    out = {}
    train = dm.datasets["train"]
    for pack in (False, True):
        train.pack = pack
        out["packed" if pack else "padded"] = train.__getitems__(list(range(len(train))))
    train.pack = dm.pack_sequences
    for name in SPLITS:
        ds = dm.datasets[name]
        out[name] = ds.__getitems__(list(range(len(ds))))
    return out


def slot_users(b: dict) -> torch.Tensor:
    """``[B, L]`` user of every slot (packed rows: the user of the slot's segment)."""
    if "segments" in b:
        return b["user_idx"][(b["segments"] - 1).clamp_min(0)]
    return b["user_idx"][:, None].expand_as(b["mask"])


def assert_rows_match(b: dict, inter: pl.DataFrame, name: str) -> None:
    rows, mask = b["event_rows"], b["mask"]
    assert rows.dtype == torch.int64 and rows.shape == mask.shape, name
    assert (rows[~mask] == 0).all() and (rows[mask] >= 1).all(), name
    at = inter[(rows[mask] - 1).numpy()]  # the parquet row of every real slot
    assert at["user_idx"].to_list() == slot_users(b)[mask].tolist(), name
    assert at["item_idx"].to_list() == b["item_ids"][mask].tolist(), name
    assert at["timestamp"].to_list() == b["timestamps"][mask].tolist(), name


def test_event_rows_point_at_the_events_row_in_interactions_parquet(folder):
    inter = pl.read_parquet(folder / "interactions.parquet")
    dm = AmazonDataModule(str(folder), max_len=6, trim_padding=False)
    for name, b in all_batches(dm).items():
        assert_rows_match(b, inter, name)
    for b in dm.predict_dataloader():  # through the loader too
        assert_rows_match(b, inter, "predict loader")


def test_event_rows_are_the_files_rows_when_the_datamodule_sorts_it(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "rev")
    inter = pl.read_parquet(folder / "interactions.parquet")
    inter = inter.sort("user_idx", descending=True, maintain_order=True)  # users last to first
    inter.write_parquet(tmp_path / "rev" / "interactions.parquet")
    dm = AmazonDataModule(str(tmp_path / "rev"), max_len=6)
    with pytest.warns(UserWarning, match="not sorted"):
        batches = all_batches(dm)
    for name, b in batches.items():
        assert_rows_match(b, inter, name)


def test_every_key_of_every_loader_is_in_the_contract(folder):
    declared = set(Batch.__annotations__)
    assert {f.key for f in EVENT_FIELDS} <= declared
    for name, b in all_batches(AmazonDataModule(str(folder), max_len=6)).items():
        assert set(b) <= declared, (name, set(b) - declared)
        for f in EVENT_FIELDS:
            assert b[f.key].dtype == f.torch_dtype and b[f.key].shape == b["mask"].shape
    assert EVENT_FIELDS[-1] == EventField("event_rows", None, "int64", 0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        EventField("x", "x", "float16", 0)


HELPFUL = EventField("helpful", "helpful_votes", "int64", -1)


def test_a_declared_field_flows_from_prepare_to_every_batch(tmp_path, monkeypatch):
    """One declaration: prepare writes the column, setup reads it, every batch gathers it."""
    monkeypatch.setattr(contract, "EVENT_FIELDS", (*EVENT_FIELDS, HELPFUL))
    rng = np.random.default_rng(0)
    n = 400
    votes = rng.integers(0, 50, n).tolist()
    votes[7] = None  # null: the field's pad
    pl.DataFrame({
        "user": [f"u{k}" for k in rng.integers(0, 40, n)],
        "item": [f"i{k}" for k in rng.integers(0, 30, n)],
        "time": rng.integers(1_300_000_000, 1_400_000_000, n),
        "stars": rng.integers(1, 6, n),
        "votes": votes,
    }).write_csv(tmp_path / "raw.csv")  # fmt: skip
    cfg = PrepareConfig(
        source="tabular", reviews=str(tmp_path / "raw.csv"), out=str(tmp_path / "ds"), kcore=0,
        report=False, keep_repeats=True,
        columns={"user_id": "user", "item_id": "item", "timestamp": "time", "rating": "stars",
                 "helpful_votes": "votes"},
    )  # fmt: skip
    out = prepare_dataset(cfg, progress=False)
    inter = pl.read_parquet(out / "interactions.parquet")
    assert inter.columns == [
        "user_idx", "item_idx", "timestamp", "rating", "helpful_votes", "review", "split"
    ]  # fmt: skip
    assert inter["helpful_votes"].null_count() == 1
    expected = torch.tensor(inter["helpful_votes"].fill_null(-1).to_list())
    dm = AmazonDataModule(str(out), max_len=5)
    for name, b in all_batches(dm).items():
        got, mask = b["helpful"], b["mask"]
        assert got.dtype == torch.int64 and got.shape == mask.shape, name
        assert (got[~mask] == -1).all(), name  # padding
        assert torch.equal(got[mask], expected[b["event_rows"][mask] - 1]), name
        assert_rows_match(b, inter, name)
    one = history_batch([3, 4], [10, 20], None, 30, 4, extra={"helpful": [5, 6]})
    assert one["helpful"].tolist() == [[-1, -1, 5, 6]]
    monkeypatch.undo()
    plain = AmazonDataModule(str(out), max_len=5)
    assert "helpful" not in all_batches(plain)["padded"]  # undeclared: not read


def _recommender_batch(items, times, ratings, query, user_idx, max_len):
    """``Recommender._batch`` as it was before serving used ``history_batch`` (reference)."""
    n, L = min(len(items), max_len), max_len
    it = torch.tensor(items[-n:], dtype=torch.long)
    ts = torch.tensor(times[-n:], dtype=torch.long)
    qt = torch.cat([ts[1:], torch.tensor([query])])
    row = {
        "item_ids": it, "timestamps": ts, "query_time": qt,
        "ratings": torch.tensor(ratings[-n:], dtype=torch.float32),
        "mask": torch.ones(n, dtype=torch.bool),
    }  # fmt: skip
    batch = {}
    for key, v in row.items():
        padded = torch.full((1, L), float("nan") if v.is_floating_point() else 0, dtype=v.dtype)
        padded[0, L - n :] = v
        batch[key] = padded
    return batch | {
        "user_idx": torch.tensor([user_idx]),
        "exclude_items": torch.tensor(sorted(set(items)), dtype=torch.long)[None],
        "history_len": torch.tensor([len(items)]),
        "target_time": torch.tensor([query]),
    }


@pytest.mark.parametrize("n", [1, 3, 6, 9])
def test_history_batch_keeps_the_recommenders_one_row_batch(n):
    items = [5, 2, 5, 7, 1, 3, 2, 8, 4][:n]
    times = [100 * (k + 1) for k in range(n)]
    ratings = [float(k % 5) if k % 3 else float("nan") for k in range(n)]
    got = history_batch(items, times, ratings, 5000, 6, user_idx=3)
    want = _recommender_batch(items, times, ratings, 5000, 3, 6)
    assert set(got) == set(want) | {"event_rows"}
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key].nan_to_num(-9), value.nan_to_num(-9)), key
    assert torch.equal(got["event_rows"], torch.zeros(1, 6, dtype=torch.long))  # not in the file
    rows = history_batch(items, times, None, 5000, 6, event_rows=range(10, 10 + n))
    assert rows["event_rows"][0, -min(n, 6) :].tolist() == list(range(10, 10 + n))[-6:]
    assert rows["ratings"].isnan().all() and rows["user_idx"].tolist() == [-1]
    with pytest.raises(ValueError, match="2 timestamps for 3 history items"):
        history_batch([1, 2, 3], [1, 2], None, 5, 4)
    with pytest.raises(ValueError, match="unknown per-event fields"):
        history_batch([1], [1], None, 5, 4, extra={"nope": [1]})


def test_history_batch_equals_the_predict_batch_of_a_known_user(folder):
    dm = AmazonDataModule(str(folder), max_len=6, trim_padding=False, predict_time="2015-01-01")
    dm.setup()
    inter = pl.read_parquet(folder / "interactions.parquet").with_row_index("row")
    pred = dm.datasets["predict"].__getitems__([4])
    user = inter.filter(pl.col("user_idx") == int(pred["user_idx"][0]))
    got = history_batch(
        user["item_idx"].to_list(),
        user["timestamp"].to_list(),
        user["rating"].to_list(),
        dm.predict_time,
        dm.max_len,
        int(pred["user_idx"][0]),
        event_rows=(user["row"].to_numpy() + 1).tolist(),
    )
    for key in (*(f.key for f in EVENT_FIELDS), "mask", "query_time", "user_idx",
                "history_len", "target_time"):  # fmt: skip
        assert torch.equal(got[key].nan_to_num(-9), pred[key].nan_to_num(-9)), key
    ex = pred["exclude_items"]
    assert got["exclude_items"].tolist() == [sorted(ex[ex > 0].tolist())]  # same set, sorted
