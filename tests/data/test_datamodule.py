"""AmazonDataModule: exact batches on hand-written folders, causality, DDP sharding, prepare."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler

from mmrec.data.datamodule import AmazonDataModule, UnpaddedDistributedSampler
from mmrec.data.samplers import LengthBucketSampler
from mmrec.ingest.errors import DataError
from mmrec.ingest.settings import PrepareConfig
from mmrec.synthetic.dataset import make_synthetic_dataset

NAN = float("nan")


def write_folder(path: Path, rows: list[tuple], num_users: int, num_items: int, protocol="loo"):
    """Writes a minimal dataset folder; ``rows`` are (user, item, time, rating, split)."""
    path.mkdir(parents=True, exist_ok=True)
    u, i, t, r, s = zip(*rows, strict=True)
    pl.DataFrame(
        {
            "user_idx": pl.Series(u, dtype=pl.Int32),
            "item_idx": pl.Series(i, dtype=pl.Int32),
            "timestamp": pl.Series(t, dtype=pl.Int64),
            "rating": pl.Series(r, dtype=pl.Float32),
            "review": pl.Series([None] * len(rows), dtype=pl.String),
            "split": list(s),
        }
    ).write_parquet(path / "interactions.parquet")
    pl.DataFrame(
        {"item_idx": range(1, num_items + 1), "item_id": [f"I{k}" for k in range(num_items)]}
    ).write_parquet(path / "items.parquet")
    pl.DataFrame(
        {"user_idx": range(num_users), "user_id": [f"U{k}" for k in range(num_users)]}
    ).write_parquet(path / "users.parquet")
    meta = {
        "source": "test",
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": len(rows),
        "time_granularity": "day",
        "split": {"protocol": protocol},
        "dropped": {},
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return path


LOO_ROWS = [
    (0, 1, 100, 5.0, "train"), (0, 2, 200, 4.0, "train"), (0, 3, 300, None, "train"),
    (0, 4, 400, 3.0, "valid"), (0, 5, 500, 2.0, "test"),
    (1, 3, 110, 1.0, "train"), (1, 3, 120, 1.0, "train"), (1, 1, 130, 1.0, "valid"),
    (1, 6, 140, 1.0, "test"),
    (2, 4, 50, 2.0, "train"), (2, 5, 60, 2.0, "train"),
    (3, 6, 70, 2.0, "train"),
]  # fmt: skip


@pytest.fixture
def loo_dm(tmp_path) -> AmazonDataModule:
    write_folder(tmp_path / "loo", LOO_ROWS, num_users=4, num_items=6)
    dm = AmazonDataModule(
        str(tmp_path / "loo"), max_len=3, batch_size=8, eval_batch_size=8, trim_padding=False
    )
    dm.setup()
    return dm


def batch_of(dm: AmazonDataModule, name: str) -> dict[str, torch.Tensor]:
    return dm.datasets[name].__getitems__(list(range(len(dm.datasets[name]))))


def eq(a: torch.Tensor, expected) -> bool:
    e = torch.as_tensor(expected, dtype=a.dtype)
    return a.shape == e.shape and bool(torch.equal(a, e) or torch.allclose(a, e, equal_nan=True))


def test_sizes_known_before_setup(tmp_path):
    write_folder(tmp_path / "d", LOO_ROWS, num_users=4, num_items=6)
    dm = AmazonDataModule(str(tmp_path / "d"))
    assert (dm.num_items, dm.num_users, dm.time_granularity) == (6, 4, "day")
    assert dm.datasets == {} and dm.data_dir == str(tmp_path / "d")


def test_loo_training_rows_exact(loo_dm):
    b = batch_of(loo_dm, "train")  # users 0, 1, 2 (user 3 has one train event)
    assert eq(b["user_idx"], [0, 1, 2])
    assert eq(b["item_ids"], [[0, 1, 2], [0, 0, 3], [0, 0, 4]])
    assert eq(b["targets"], [[0, 2, 3], [0, 0, 3], [0, 0, 5]])
    assert eq(b["mask"], [[False, True, True], [False, False, True], [False, False, True]])
    assert eq(b["timestamps"], [[0, 100, 200], [0, 0, 110], [0, 0, 50]])
    assert eq(b["query_time"], [[0, 200, 300], [0, 0, 120], [0, 0, 60]])
    assert eq(b["ratings"], [[NAN, 5.0, 4.0], [NAN, NAN, 1.0], [NAN, NAN, 2.0]])
    for key in ("item_ids", "targets", "timestamps", "query_time", "user_idx"):
        assert b[key].dtype == torch.int64, key
    assert b["ratings"].dtype == torch.float32 and b["mask"].dtype == torch.bool
    assert "target_items" not in b


def test_prefix_samples_one_row_per_target_loss_at_its_end(tmp_path):
    write_folder(tmp_path / "loo", LOO_ROWS, num_users=4, num_items=6)
    dm = AmazonDataModule(
        str(tmp_path / "loo"), max_len=2, batch_size=8, trim_padding=False, prefix_samples=True
    )
    dm.setup()
    b = batch_of(dm, "train")  # user 0: targets 2, 3; user 1: 3; user 2: 5; user 3: none
    assert eq(b["user_idx"], [0, 0, 1, 2])
    assert eq(b["item_ids"], [[0, 1], [1, 2], [0, 3], [0, 4]])  # the last max_len before each
    assert eq(b["targets"], [[0, 2], [0, 3], [0, 3], [0, 5]])  # only the last position
    assert eq(b["query_time"], [[0, 200], [200, 300], [0, 120], [0, 60]])
    assert float(b["loss_weight"]) == 1.0
    ds = dm.datasets["train"]
    ds.pack = True
    p = ds.__getitems__([0, 1, 2, 3])
    last = p["mask"] & (p["targets"] > 0)
    assert sorted(p["targets"][last].tolist()) == [2, 3, 3, 5]
    assert int(last.sum()) == 4 and int((p["targets"] > 0).sum()) == 4  # one term per row
    for seg in range(1, 5):  # each target sits on its segment's newest slot
        slots = torch.nonzero(p["segments"] == seg)
        row, col = slots[-1].tolist()
        assert bool(last[row, col]) and int(last[p["segments"] == seg].sum()) == 1
    # a prefix longer than max_len keeps its newest events
    short = AmazonDataModule(
        str(tmp_path / "loo"), max_len=1, trim_padding=False, prefix_samples=True
    )
    short.setup()
    assert eq(batch_of(short, "train")["item_ids"], [[1], [2], [3], [4]])
    assert eq(batch_of(short, "train")["targets"], [[2], [3], [3], [5]])
    # the default trains each user's window at every position (the rows above, once each)
    off = AmazonDataModule(str(tmp_path / "loo"), max_len=2, trim_padding=False)
    off.setup()
    assert eq(batch_of(off, "train")["targets"], [[2, 3], [0, 3], [0, 5]])


def test_loo_eval_rows_exact(loo_dm):
    v = batch_of(loo_dm, "valid")  # users 0 and 1; user 2 and 3 have no valid event
    assert eq(v["user_idx"], [0, 1])
    assert eq(v["item_ids"], [[1, 2, 3], [0, 3, 3]])
    assert eq(v["query_time"], [[200, 300, 400], [0, 120, 130]])  # last: the target's time
    assert eq(v["ratings"], [[5.0, 4.0, NAN], [NAN, 1.0, 1.0]])
    assert eq(v["target_items"], [[4], [1]])
    assert eq(v["target_time"], [400, 130])
    assert eq(v["history_len"], [3, 2])
    assert eq(v["exclude_items"], [[1, 2, 3], [3, 0, 0]])  # unique, 0-padded
    t = batch_of(loo_dm, "test")
    assert eq(t["item_ids"], [[2, 3, 4], [3, 3, 1]])
    assert eq(t["query_time"], [[300, 400, 500], [120, 130, 140]])
    assert eq(t["target_items"], [[5], [6]])
    assert eq(t["history_len"], [4, 3])
    # the whole history is excluded, not only the last max_len events
    assert eq(t["exclude_items"], [[1, 2, 3, 4], [3, 1, 0, 0]])


def test_predict_rows_and_time(tmp_path):
    write_folder(tmp_path / "d", LOO_ROWS, num_users=4, num_items=6)
    dm = AmazonDataModule(str(tmp_path / "d"), max_len=3)
    dm.setup()
    p = batch_of(dm, "predict")
    assert eq(p["user_idx"], [0, 1, 2, 3])
    assert eq(p["item_ids"][[0, 3]], [[3, 4, 5], [0, 0, 6]])
    assert eq(p["query_time"][[0, 3]], [[400, 500, 500 + 86400], [0, 0, 70 + 86400]])
    assert eq(p["target_items"], [[0]] * 4)
    dm2 = AmazonDataModule(str(tmp_path / "d"), max_len=3, predict_time="2014-12-20")
    dm2.setup()
    p2 = batch_of(dm2, "predict")
    assert (p2["query_time"][:, -1] == 1419033600).all() and (p2["target_time"] == 1419033600).all()


def test_exclude_history_off(tmp_path):
    write_folder(tmp_path / "d", LOO_ROWS, num_users=4, num_items=6)
    dm = AmazonDataModule(str(tmp_path / "d"), max_len=3, exclude_history=False)
    dm.setup()
    assert eq(batch_of(dm, "test")["exclude_items"], [[0], [0]])


def test_temporal_multi_target(tmp_path):
    rows = [
        (0, 1, 100, 1.0, "train"), (0, 2, 200, 1.0, "train"), (0, 3, 300, 1.0, "valid"),
        (0, 4, 400, 1.0, "test"), (0, 2, 410, 1.0, "test"), (0, 4, 420, 1.0, "test"),
        (1, 5, 350, 1.0, "valid"), (1, 1, 450, 1.0, "test"),
        (2, 3, 120, 1.0, "train"), (2, 1, 130, 1.0, "train"),
    ]  # fmt: skip
    write_folder(tmp_path / "t", rows, num_users=3, num_items=5, protocol="temporal")
    dm = AmazonDataModule(str(tmp_path / "t"), max_len=4, trim_padding=False)
    dm.setup()
    t = batch_of(dm, "test")
    assert eq(t["user_idx"], [0, 1])
    assert eq(t["target_items"], [[4, 2], [1, 0]])  # deduplicated, time order, 0-padded
    assert eq(t["item_ids"], [[0, 1, 2, 3], [0, 0, 0, 5]])  # only events before the cut-off
    assert eq(t["target_time"], [400, 450])
    assert eq(t["query_time"][:, -1], [400, 450])
    v = batch_of(dm, "valid")  # user 1's valid event has no history: skipped and counted
    assert eq(v["user_idx"], [0]) and eq(v["target_items"], [[3]])
    assert dm.skipped["valid"] == {"no_history": 1} and dm.skipped["test"] == {"no_history": 0}
    assert eq(dm.item_train_counts, [0, 2, 1, 1, 0, 0])


def test_unknown_split_and_bad_order_errors(tmp_path):
    write_folder(tmp_path / "a", [(0, 1, 1, 1.0, "train"), (0, 2, 2, 1.0, "dev")], 1, 2)
    with pytest.raises(ValueError, match=r"unknown split values \['dev'\]"):
        AmazonDataModule(str(tmp_path / "a")).setup()
    write_folder(tmp_path / "b", [(0, 1, 1, 1.0, "test"), (0, 2, 2, 1.0, "train")], 1, 2)
    with pytest.raises(ValueError, match="from a later split to an earlier one"):
        AmazonDataModule(str(tmp_path / "b")).setup()


@pytest.fixture(scope="module")
def synthetic_dm(tmp_path_factory) -> AmazonDataModule:
    path = make_synthetic_dataset(
        tmp_path_factory.mktemp("syn"), num_users=150, num_items=120, mean_events=12, seed=3
    )
    dm = AmazonDataModule(str(path), max_len=8, batch_size=64, eval_batch_size=64)
    dm.setup()
    return dm


@pytest.mark.parametrize("pack", [False, True])
def test_training_batches_are_causal(synthetic_dm, pack):
    n_rows = 0
    synthetic_dm.pack_sequences = pack
    for b in synthetic_dm.train_dataloader():
        m = b["mask"]
        both = m[:, :-1] & m[:, 1:]
        if pack:  # neighbours within one user's segment
            seg = b["segments"]
            both &= seg[:, :-1] == seg[:, 1:]
            assert seg.max() == len(b["user_idx"]) and (seg[m] > 0).all()
        assert torch.equal(b["targets"][:, :-1][both], b["item_ids"][:, 1:][both])
        assert torch.equal(b["query_time"][:, :-1][both], b["timestamps"][:, 1:][both])
        assert (b["query_time"][m] >= b["timestamps"][m]).all()
        assert (b["targets"][m] > 0).all() and (b["targets"][~m] == 0).all()
        assert (b["item_ids"][~m] == 0).all() and b["ratings"][~m].isnan().all()
        if not pack:
            assert m[:, -1].all()  # left padding: the most recent event is at L-1
            assert (m.long().diff(dim=1) >= 0).all()  # pads only on the left
        n_rows += len(b["user_idx"])
    synthetic_dm.pack_sequences = True
    assert n_rows == 150


def test_eval_batches_history_before_target(synthetic_dm):
    df = pl.read_parquet(Path(synthetic_dm.data_dir) / "interactions.parquet")
    by_user = {k[0]: g for k, g in df.group_by("user_idx")}
    for split, before in (("valid", ["train"]), ("test", ["train", "valid"])):
        for b in synthetic_dm._eval_loader(split):
            assert (
                b["timestamps"][b["mask"]] <= b["target_time"].repeat_interleave(b["mask"].sum(1))
            ).all()
            assert torch.equal(b["query_time"][:, -1], b["target_time"])
            for row, u in enumerate(b["user_idx"].tolist()[:20]):
                g = by_user[u]
                hist = g.filter(pl.col("split").is_in(before))["item_idx"].to_list()
                target = g.filter(pl.col("split") == split)["item_idx"].to_list()
                ex = b["exclude_items"][row]
                assert set(ex[ex > 0].tolist()) == set(hist) and len(ex[ex > 0]) == len(set(hist))
                assert int(b["history_len"][row]) == len(hist)
                assert b["item_ids"][row][b["mask"][row]].tolist() == hist[-8:]
                assert b["target_items"][row].tolist() == target


def test_unpadded_sampler_orders_a_shard_by_length():
    lengths = torch.tensor([5, 1, 3, 1, 2, 9])
    shards = [list(UnpaddedDistributedSampler(range(6), 2, r, lengths=lengths)) for r in (0, 1)]
    assert shards == [[4, 2, 0], [1, 3, 5]]  # rows 0, 2, 4 by length 5, 3, 2; ties stable
    with pytest.raises(ValueError, match="lengths has 2 rows"):
        UnpaddedDistributedSampler(range(6), lengths=torch.ones(2))


class _Lengths:
    def __init__(self, lengths):
        self._l = torch.as_tensor(lengths)

    def __len__(self):
        return len(self._l)

    def lengths(self):
        return self._l


def test_length_bucket_sampler_covers_every_row_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 51, (1000,), generator=g)
    data = _Lengths(lengths)
    sampler = LengthBucketSampler(data, batch_size=32, window=10, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000))  # every row once
    batches = [order[i : i + 32] for i in range(0, 1000, 32)]
    waste = sum(len(b) * int(lengths[b].max()) - int(lengths[b].sum()) for b in batches)
    plain = list(LengthBucketSampler(data, batch_size=32, window=1, seed=3))
    plain_batches = [plain[i : i + 32] for i in range(0, 1000, 32)]
    plain_waste = sum(len(b) * int(lengths[b].max()) - int(lengths[b].sum()) for b in plain_batches)
    assert waste < plain_waste / 5
    assert len(batches[-1]) == 1000 % 32  # the partial batch is last
    assert list(LengthBucketSampler(data, batch_size=32, window=10, seed=3)) == order  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != order
    shards = [
        set(LengthBucketSampler(data, 32, 10, num_replicas=2, rank=r, seed=3)) for r in (0, 1)
    ]
    assert shards[0] | shards[1] == set(range(1000)) and len(shards[0]) == len(shards[1]) == 500
    with pytest.raises(ValueError, match="must be >= 1"):
        LengthBucketSampler(data, batch_size=32, window=0)


def test_loss_weight_makes_every_position_weigh_the_same(tmp_path):
    write_folder(tmp_path / "d", LOO_ROWS, num_users=4, num_items=6)
    dm = AmazonDataModule(str(tmp_path / "d"), max_len=4)
    dm.setup()
    ds = dm.datasets["train"]  # users 0, 1, 2 with 2, 1, 1 input positions: mean 4/3
    for rows, tokens in (([0, 1, 2], 4), ([0], 2), ([1, 2], 2)):
        w = ds.__getitems__(rows)["loss_weight"]
        assert w.dtype == torch.float32 and w.ndim == 0
        assert w.item() == pytest.approx(tokens / (len(rows) * 4 / 3))
    assert "loss_weight" not in dm.datasets["valid"].__getitems__([0])
    assert dm.train_dataloader().sampler.window == 1  # plain shuffling unless asked for


def test_unpadded_sampler_shards_disjoint():
    data = list(range(5))
    shards = [list(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in (0, 1)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert sorted(shards[0] + shards[1]) == data
    assert [len(UnpaddedDistributedSampler(data, 2, r)) for r in (0, 1)] == [3, 2]
    assert list(UnpaddedDistributedSampler(data)) == data  # no process group: everything
    with pytest.raises(ValueError):
        UnpaddedDistributedSampler(data, num_replicas=2, rank=2)


def test_loaders_keep_their_samplers(loo_dm):
    # Lightning only injects its (padding) DistributedSampler when the loader's sampler is not
    # a DistributedSampler; every loader here has one, so no user is ever duplicated.
    assert isinstance(loo_dm.val_dataloader().sampler, UnpaddedDistributedSampler)
    assert isinstance(loo_dm.predict_dataloader().sampler, UnpaddedDistributedSampler)
    train = loo_dm.train_dataloader()
    assert isinstance(train.sampler, DistributedSampler) and train.sampler.num_replicas == 1
    first = [b["user_idx"].tolist() for b in train]
    again = [b["user_idx"].tolist() for b in loo_dm.train_dataloader()]
    assert first == again  # seeded: same order for the same epoch
    assert sorted(sum(first, [])) == [0, 1, 2]


def test_predict_through_lightning(loo_dm):
    import lightning.pytorch as L

    class Echo(L.LightningModule):
        def predict_step(self, batch, batch_idx):
            return batch["user_idx"]

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    out = trainer.predict(Echo(), datamodule=loo_dm)
    assert torch.cat(out).tolist() == [0, 1, 2, 3]  # untrimmed: user order


def test_trimmed_batches_are_the_untrimmed_ones_without_shared_padding(tmp_path):
    write_folder(tmp_path / "d", LOO_ROWS, num_users=4, num_items=6)
    full = AmazonDataModule(str(tmp_path / "d"), max_len=4, trim_padding=False)
    trim = AmazonDataModule(str(tmp_path / "d"), max_len=4)
    full.setup(), trim.setup()
    widths = {}
    for name in ("train", "valid", "test", "predict"):
        for rows in ([0], [1], list(range(len(full.datasets[name])))):
            a = full.datasets[name].__getitems__(rows)
            b = trim.datasets[name].__getitems__(rows)
            w = b["item_ids"].shape[1]
            assert w == min(4, int(trim.datasets[name].lengths()[rows].max()))
            assert not a["mask"][:, : 4 - w].any()  # only shared padding was cut
            for key, value in a.items():
                cut = (
                    value[:, -w:]
                    if value.ndim == 2 and value.shape[1] == 4 and key != "exclude_items"
                    else value
                )
                assert eq(b[key], cut.tolist()), (name, rows, key)
            widths[name, tuple(rows[:2])] = w
    assert widths["train", (0,)] == 2 and widths["train", (1,)] == 1  # users 0, 1: 2 and 1 inputs
    assert widths["valid", (1,)] == 2 and widths["test", (0,)] == 4  # user 0's 4 events: max_len


def test_eval_loaders_visit_short_histories_first(tmp_path):
    write_folder(tmp_path / "d", LOO_ROWS, num_users=4, num_items=6)
    dm = AmazonDataModule(str(tmp_path / "d"), max_len=3, eval_batch_size=2)
    users = [u for b in dm.predict_dataloader() for u in b["user_idx"].tolist()]
    lengths = dm.datasets["predict"].lengths()
    assert sorted(users) == [0, 1, 2, 3] and users == [3, 2, 0, 1]  # 1, 2, 3 (capped), 3 events
    assert lengths.tolist() == [3, 3, 2, 1]


def test_missing_folder_says_run_prepare(tmp_path):
    dm = AmazonDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="mmrec prepare"):
        _ = dm.num_items


SHIPPED = Path(__file__).resolve().parents[2] / "mmrec" / "data" / "shipped"


def _gift_cards(**changes) -> PrepareConfig:
    settings = dict(
        source="amazon2018",
        out="ignored",
        reviews=str(SHIPPED / "Gift_Cards_5.json.gz"),
        meta=str(SHIPPED / "meta_Gift_Cards.json.gz"),
        report=False,
    )
    return PrepareConfig(**(settings | changes))


def test_folder_is_prepared_then_checked_against_its_settings(tmp_path, capsys):
    folder = tmp_path / "made"
    dm = AmazonDataModule(str(folder), prepare=_gift_cards())
    assert dm.num_items == 147  # prepared on first use, into data_dir (not `out`)
    meta = json.loads((folder / "meta.json").read_text())
    assert (
        meta["settings"]["kcore"] == 5 and meta["input_files"][0]["file"] == "Gift_Cards_5.json.gz"
    )
    stamp = (folder / "interactions.parquet").stat().st_mtime_ns
    assert AmazonDataModule(str(folder), prepare=_gift_cards()).num_items == 147
    assert (folder / "interactions.parquet").stat().st_mtime_ns == stamp  # up to date: untouched
    assert "is up to date" in capsys.readouterr().out
    # other settings never train on this folder: the message names what differs
    with pytest.raises(DataError, match=r"kcore 5 -> 6.*--data.prepare.overwrite true"):
        _ = AmazonDataModule(str(folder), prepare=_gift_cards(kcore=6)).num_items
    with pytest.raises(
        DataError, match=r"split 'loo' -> 'temporal'.*valid_start None -> '2019-01-01'"
    ):
        AmazonDataModule(
            str(folder),
            prepare=_gift_cards(
                split="temporal", valid_start="2019-01-01", test_start="2019-06-01"
            ),
        ).setup()
    dm = AmazonDataModule(str(folder), prepare=_gift_cards(kcore=6, overwrite=True))
    assert dm.num_items < 147 and json.loads((folder / "meta.json").read_text())["kcore"] == 6
    # no prepare settings: the folder is used as it is
    assert AmazonDataModule(str(folder)).num_items == dm.num_items


def test_changed_input_file_is_named(tmp_path, capsys):
    reviews = tmp_path / "reviews.json.gz"
    original = (SHIPPED / "Gift_Cards_5.json.gz").read_bytes()
    reviews.write_bytes(original)
    folder = tmp_path / "made"
    assert AmazonDataModule(str(folder), prepare=_gift_cards(reviews=str(reviews))).num_items
    stamp = (folder / "interactions.parquet").stat().st_mtime_ns
    # a copy or a clone changes the modification time, not the content: still up to date
    os.utime(reviews, ns=(1, 1))
    assert AmazonDataModule(str(folder), prepare=_gift_cards(reviews=str(reviews))).num_items
    assert (folder / "interactions.parquet").stat().st_mtime_ns == stamp
    assert "is up to date" in capsys.readouterr().out
    # meta.json of an mmrec before the digest (fingerprint of size and mtime): same size and
    # mtime -> up to date, and the record is brought up to date
    meta = json.loads((folder / "meta.json").read_text())
    meta["fingerprint"] = "0" * 16
    del meta["input_files"][0]["sha256"]
    meta["input_files"][0]["mtime_ns"] = 1
    (folder / "meta.json").write_text(json.dumps(meta))
    assert AmazonDataModule(str(folder), prepare=_gift_cards(reviews=str(reviews))).num_items
    assert "inputs identical by content" in capsys.readouterr().out
    assert "sha256" in json.loads((folder / "meta.json").read_text())["input_files"][0]
    # the same size, one byte changed: another file
    edited = bytearray(original)
    edited[len(edited) // 2] ^= 0xFF
    reviews.write_bytes(bytes(edited))
    with pytest.raises(DataError, match=rf"input {reviews} is not the file it was prepared from"):
        _ = AmazonDataModule(str(folder), prepare=_gift_cards(reviews=str(reviews))).num_items


def test_digest_of_a_large_file_samples_it(tmp_path, monkeypatch):
    from mmrec.ingest import settings as prepare

    monkeypatch.setattr(prepare, "_WHOLE_FILE_HASH", 1000)
    monkeypatch.setattr(prepare, "_BLOCK", 10)
    path = tmp_path / "big.bin"
    data = bytearray(range(256)) * 20  # 5,120 bytes: 16 sampled blocks of 10 bytes
    path.write_bytes(bytes(data))
    digest = prepare.file_digest(path)
    data[0] ^= 1  # the first byte is in the first block
    path.write_bytes(bytes(data))
    assert prepare.file_digest(path) != digest
    data[0] ^= 1
    data[5] ^= 1
    data[5119] ^= 1  # the last byte is in the last block
    path.write_bytes(bytes(data))
    changed = prepare.file_digest(path)
    assert changed != digest
    data[50] ^= 1  # between blocks (step 340): not seen, as documented
    path.write_bytes(bytes(data))
    assert prepare.file_digest(path) == changed


def test_item_train_counts(loo_dm):
    counts = loo_dm.item_train_counts
    assert counts.dtype == torch.int64 and eq(counts, [0, 1, 1, 3, 1, 1, 1])


def _ddp_worker(rank: int, folder: str, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        dm = AmazonDataModule(folder, max_len=4, batch_size=2, eval_batch_size=2)
        got = {
            name: torch.cat([b["user_idx"] for b in loader]).tolist()
            for name, loader in (
                ("valid", dm.val_dataloader()),
                ("test", dm.test_dataloader()),
                ("predict", dm.predict_dataloader()),
                ("train", dm.train_dataloader()),
            )
        }
        Path(out, f"{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_ddp_eval_shards_cover_every_user_once(tmp_path):
    import torch.multiprocessing as mp

    path = make_synthetic_dataset(tmp_path / "d", num_users=7, num_items=60, seed=0)
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(str(path), init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    for name in ("valid", "test", "predict"):
        assert sorted(r0[name] + r1[name]) == list(range(7)), name  # no user twice, none lost
        assert (len(r0[name]), len(r1[name])) == (4, 3)
    assert len(r0["train"]) == len(r1["train"]) == 4  # training may pad (7 -> 8 rows)
    assert set(r0["train"] + r1["train"]) == set(range(7))


def test_config_parses_prepare_and_predict_time(tmp_path):
    from jsonargparse import ActionConfigFile, ArgumentParser

    write_folder(tmp_path / "d", LOO_ROWS, num_users=4, num_items=6)
    parser = ArgumentParser()
    parser.add_class_arguments(AmazonDataModule, "data", sub_configs=True)  # as LightningCLI
    cfg = parser.parse_args(
        ["--data.data_dir", str(tmp_path / "d"), "--data.prepare.source", "tabular",
         "--data.prepare.out", "ignored", "--data.predict_time", "2014-12-20"]
    )  # fmt: skip
    dm = parser.instantiate(cfg).data
    assert isinstance(dm.prepare, PrepareConfig) and dm.predict_time == 1419033600
    assert dm.prepare.source == "tabular" and dm.prepare.kcore == 5
    # a configs/data/*.yaml file may stand for the prepare settings (paths relative to the
    # config that names it), and single settings still override it
    (tmp_path / "cfg" / "data").mkdir(parents=True)
    (tmp_path / "cfg" / "data" / "p.yaml").write_text("source: tabular\nkcore: 0\nsplit: loo\n")
    (tmp_path / "cfg" / "train.yaml").write_text(
        f"data:\n  data_dir: {tmp_path / 'd'}\n  prepare: data/p.yaml\n"
    )
    parser.add_argument("--config", action=ActionConfigFile)
    cfg = parser.parse_args(
        ["--config", str(tmp_path / "cfg" / "train.yaml"), "--data.prepare.kcore", "7"]
    )
    assert (cfg.data.prepare.source, cfg.data.prepare.kcore, cfg.data.prepare.split) == (
        "tabular",
        7,
        "loo",
    )
    cfg = parser.parse_args(["--data.data_dir", str(tmp_path / "d")])
    dm = parser.instantiate(cfg).data
    assert dm.prepare.source is None  # no prepare settings: the folder is used as it is
    assert dm.num_items == 6  # what LightningCLI links into model.num_items


def test_prepare_null_on_the_command_line_uses_the_folder_as_it_is(tmp_path, capfd):
    """``--data.prepare null`` over a base config that names a prepare file: no preparation,
    the folder's meta.json is all that is checked (a folder prepared elsewhere)."""
    from mmrec.cli import main

    folder = write_folder(tmp_path / "elsewhere", LOO_ROWS, num_users=4, num_items=6)
    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    common = [
        f"--config={config}",  # names data/gift_cards_shipped.yaml as data.prepare
        "--data.prepare=null",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
    ]
    runs = tmp_path / "runs"
    common.append(f"--trainer.default_root_dir={runs}")
    assert main(["fit", *common, f"--data.data_dir={folder}"]) == 0
    (run,) = [p for p in (runs / "quickstart").iterdir() if p.name != "latest"]
    assert list(run.rglob("*.ckpt"))
    assert yaml.safe_load(next(run.rglob("config.yaml")).read_text())["data"]["prepare"] is None
    assert "settings" not in json.loads((folder / "meta.json").read_text())  # not prepared again
    capfd.readouterr()
    assert main(["fit", *common, f"--data.data_dir={tmp_path / 'none'}"]) == 2
    assert f"dataset folder {tmp_path / 'none'} has no meta.json" in capfd.readouterr().err
