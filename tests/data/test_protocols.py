"""Evaluation protocols of AmazonDataModule: one-shot against successive (streaming) rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from mmrec.data.datamodule import AmazonDataModule
from mmrec.ingest.errors import DataError
from mmrec.ingest.settings import PrepareConfig
from mmrec.synthetic.dataset import make_synthetic_dataset
from tests.data.test_datamodule import LOO_ROWS, batch_of, eq, write_folder
from tests.ingest.test_prepare import _prep

# (user, item, time, rating, split); user 0 buys item 2 again in test (a target: it is not
# in test before) and item 4 twice in test (once a target); 410 is a same-day tie (2, then 5)
TEMPORAL_ROWS = [
    (0, 1, 100, 1.0, "train"), (0, 2, 200, 1.0, "train"), (0, 3, 300, 1.0, "valid"),
    (0, 4, 400, 1.0, "test"), (0, 2, 410, 1.0, "test"), (0, 5, 410, 1.0, "test"),
    (0, 4, 420, 1.0, "test"), (0, 6, 430, 1.0, "test"),
    (1, 5, 350, 1.0, "valid"), (1, 1, 450, 1.0, "test"), (1, 3, 460, 1.0, "test"),
    (2, 3, 120, 1.0, "train"), (2, 1, 130, 1.0, "train"),
    (3, 2, 500, 1.0, "test"), (3, 6, 500, 1.0, "test"),
]  # fmt: skip


def module(path: Path, **kwargs) -> AmazonDataModule:
    dm = AmazonDataModule(str(path), trim_padding=False, **kwargs)
    dm.setup()
    return dm


@pytest.fixture
def temporal(tmp_path) -> Path:
    return write_folder(tmp_path / "t", TEMPORAL_ROWS, 4, 6, protocol="temporal")


def test_successive_test_rows_hold_exactly_the_events_before_each_target(temporal):
    t = batch_of(module(temporal, max_len=8, eval_protocol="successive"), "test")
    # one row per target event, in (user, time, file) order; user 0's second item 4 (420) is
    # a repeat within test, so no target, but it is history of the later target 6
    assert eq(t["user_idx"], [0, 0, 0, 0, 1, 1, 3])
    assert eq(t["target_items"], [[4], [2], [5], [6], [1], [3], [6]])
    assert eq(t["target_time"], [400, 410, 410, 430, 450, 460, 500])
    assert eq(t["query_time"][:, -1], [400, 410, 410, 430, 450, 460, 500])
    histories = [  # (items, times) of every event before the target, in order
        ([1, 2, 3], [100, 200, 300]),
        ([1, 2, 3, 4], [100, 200, 300, 400]),  # the target itself (2 at 410) is not in it
        ([1, 2, 3, 4, 2], [100, 200, 300, 400, 410]),  # same-day tie: 2 comes first in the file
        ([1, 2, 3, 4, 2, 5, 4], [100, 200, 300, 400, 410, 410, 420]),
        ([5], [350]),
        ([5, 1], [350, 450]),
        ([2], [500]),  # user 3's first test event (no history) is skipped
    ]
    for row, (items, times) in enumerate(histories):
        m = t["mask"][row]
        assert t["item_ids"][row][m].tolist() == items, row
        assert t["timestamps"][row][m].tolist() == times, row
        assert int(t["history_len"][row]) == len(items)
        ex = t["exclude_items"][row]
        assert ex[ex > 0].tolist() == list(dict.fromkeys(items)), row  # distinct, first-seen
    # inside the history each query time is the next event's time (as in training)
    assert eq(t["query_time"][3][t["mask"][3]], [200, 300, 400, 410, 410, 420, 430])


def test_successive_validation_and_skipped_targets(temporal):
    dm = module(temporal, max_len=8, eval_protocol="successive")
    v = batch_of(dm, "valid")
    assert eq(v["user_idx"], [0]) and eq(v["target_items"], [[3]]) and eq(v["target_time"], [300])
    assert eq(v["item_ids"][0][v["mask"][0]], [1, 2])
    assert dm.skipped == {"valid": {"no_history": 1}, "test": {"no_history": 1}}
    one_shot = module(temporal, max_len=8)  # today's rows on the same folder
    o = batch_of(one_shot, "test")
    assert eq(o["user_idx"], [0, 1]) and eq(o["target_items"], [[4, 2, 5, 6], [1, 3, 0, 0]])
    assert eq(o["target_time"], [400, 450])
    assert one_shot.skipped == {"valid": {"no_history": 1}, "test": {"no_history": 1}}


def test_successive_history_longer_than_max_len_keeps_its_newest_and_excludes_all(temporal):
    t = batch_of(module(temporal, max_len=3, eval_protocol="successive"), "test")
    assert eq(t["item_ids"][3], [2, 5, 4]) and eq(t["timestamps"][3], [410, 410, 420])
    assert eq(t["exclude_items"][3], [1, 2, 3, 4, 5])
    assert int(t["history_len"][3]) == 7


def test_successive_rows_same_when_trimmed(temporal):
    full = batch_of(module(temporal, max_len=8, eval_protocol="successive"), "test")
    dm = AmazonDataModule(str(temporal), max_len=8, eval_protocol="successive")
    dm.setup()
    for b in dm.test_dataloader():  # trimmed batches, shortest history first
        for row, target in enumerate(b["target_time"].tolist()):
            k = full["target_time"].tolist().index(target)
            if target == 410:  # two targets at 410: tell them apart by their item
                k += int(b["target_items"][row, 0] == 5)
            mine, ref = b["mask"][row], full["mask"][k]
            assert b["item_ids"][row][mine].tolist() == full["item_ids"][k][ref].tolist()


def test_leave_one_out_rows_are_the_same_under_both_protocols(tmp_path):
    write_folder(tmp_path / "loo", LOO_ROWS, num_users=4, num_items=6)
    syn = make_synthetic_dataset(tmp_path / "syn", num_users=40, num_items=50, seed=1)
    for path in (tmp_path / "loo", syn):
        a, b = (module(path, max_len=4, eval_protocol=p) for p in ("one_shot", "successive"))
        for split in ("valid", "test"):
            x, y = batch_of(a, split), batch_of(b, split)
            assert len(x["user_idx"]) > 0 and x.keys() == y.keys()
            for key in x:
                assert eq(y[key], x[key]), (path, split, key)
        assert a.skipped == b.skipped


def test_successive_matches_a_per_event_reference_on_a_temporal_dataset(tmp_path):
    path = make_synthetic_dataset(
        tmp_path / "syn", num_users=80, num_items=40, mean_events=10, split="temporal", seed=2
    )
    dm = module(path, max_len=5, eval_protocol="successive")
    df = pl.read_parquet(path / "interactions.parquet")
    for split in ("valid", "test"):
        expected = []  # (user, target, time, history items) by a plain loop over events
        for (user,), g in df.group_by("user_idx", maintain_order=True):
            seen = set()
            for k, (item, ts, s) in enumerate(g.select("item_idx", "timestamp", "split").rows()):
                if s == split and item not in seen and k > 0:
                    expected.append((user, item, ts, g["item_idx"][:k].to_list()))
                if s == split:
                    seen.add(item)
        t = batch_of(dm, split)
        assert len(expected) > 10 and len(t["user_idx"]) == len(expected)
        for row, (user, item, ts, hist) in enumerate(expected):
            assert int(t["user_idx"][row]) == user and int(t["target_items"][row, 0]) == item
            assert int(t["target_time"][row]) == ts and int(t["history_len"][row]) == len(hist)
            assert t["item_ids"][row][t["mask"][row]].tolist() == hist[-5:]
            ex = t["exclude_items"][row]
            assert ex[ex > 0].tolist() == list(dict.fromkeys(hist))
            assert (t["timestamps"][row][t["mask"][row]] <= ts).all()


def test_protocol_option_is_checked_and_described(tmp_path, temporal):
    with pytest.raises(ValueError, match="eval_protocol must be 'one_shot' or 'successive'"):
        AmazonDataModule(str(temporal), eval_protocol="streaming")  # type: ignore[arg-type]
    write_folder(tmp_path / "loo", LOO_ROWS, num_users=4, num_items=6)
    assert module(tmp_path / "loo", eval_protocol="successive").protocol_description() == (
        "leave-one-out"
    )
    syn = make_synthetic_dataset(
        tmp_path / "syn", num_users=10, num_items=40, split="temporal",
        valid_start="2014-04-01", test_start="2014-05-01",
    )  # fmt: skip
    assert AmazonDataModule(str(syn), eval_protocol="successive").protocol_description() == (
        "temporal (valid from 2014-04-01, test from 2014-05-01), successive"
    )
    assert AmazonDataModule(str(syn)).protocol_description() == (
        "temporal (valid from 2014-04-01, test from 2014-05-01), one-shot"
    )


def test_new_options_at_their_default_keep_stored_run_keys():
    from mmrec.experiments.store import run_key

    def config(**data) -> dict:
        prepare = {"split": "temporal", **data.pop("prepare", {})}
        return {"seed_everything": 0, "data": {"data_dir": "d", "prepare": prepare, **data}}

    before = config()
    now = config(eval_protocol="one_shot", prepare={"test_end": None})
    assert run_key(now) == run_key(before)
    successive = config(eval_protocol="successive", prepare={"test_end": None})
    ended = config(eval_protocol="one_shot", prepare={"test_end": "2014-01-01"})
    assert len({run_key(before), run_key(successive), run_key(ended)}) == 3


def test_test_end_drops_later_events_before_the_kcore_and_counts_them(tmp_path):
    day, base = 86400, 18262 * 86400  # 2020-01-01
    rows = [(f"u{k % 4}", f"i{k % 13}", base + k * day // 2, 5) for k in range(40)]
    rows += [("u0", "late", base + 18 * day, 5), ("u9", "i1", base + 19 * day, 5)]
    windows = {"valid_start": "2020-01-10", "test_start": "2020-01-15", "test_end": "2020-01-18"}
    out, inter, meta = _prep(tmp_path, rows, split="temporal", **windows)
    assert int(inter["timestamp"].max()) < base + 17 * day  # k >= 34 (day 17 on) is gone
    assert meta["dropped"] == {"duplicate": 0, "repeat": 0, "after_test_end": 8}
    assert meta["num_interactions"] == 34 and meta["input_rows"] == 42
    assert meta["split"]["counts"] == {"train": 18, "valid": 10, "test": 6}
    assert meta["split"]["test_end"] == "2020-01-18"
    assert meta["split"]["test_end_ts"] == base + 17 * day
    assert (meta["num_users"], meta["num_items"]) == (4, 13)  # "late" and "u9" never existed
    dm = module(out, max_len=4, eval_protocol="successive")
    assert len(dm.datasets["test"]) == 6 and dm.skipped["test"] == {"no_history": 0}
    assert dm.protocol_description() == (
        "temporal (valid from 2020-01-10, test from 2020-01-15 to 2020-01-18), successive"
    )
    # an item bought only after test_end is no item of the folder, so k-core counts without it
    _, kept, meta = _prep(tmp_path, rows, split="temporal", kcore=2, out=str(tmp_path / "k"),
                          **windows)  # fmt: skip
    assert meta["dropped"]["after_test_end"] == 8 and meta["dropped"]["kcore"] == 0
    assert kept.height == 34


def test_test_end_is_validated_and_left_out_of_older_fingerprints(tmp_path):
    from mmrec.ingest.settings import settings

    rows = [("u0", "i0", 86400, 5)]
    bad = {"split": "temporal", "valid_start": "2020-01-01", "test_start": "2020-02-01"}
    for end in ("2020-02-01", "2020-01-15"):
        with pytest.raises(DataError, match=r"--test_end .* must be after --test_start 2020-02-01"):
            _prep(tmp_path, rows, **bad, test_end=end)
    with pytest.raises(DataError, match="--test_end applies to --split temporal only"):
        _prep(tmp_path, rows, test_end="2020-02-01")
    with pytest.raises(DataError, match="--test_end"):
        _prep(tmp_path, rows, **bad, test_end="February")
    base = PrepareConfig(source="tabular", split="temporal", valid_start="a", test_start="b")
    assert "test_end" not in settings(base)  # same fingerprint as before the option existed
    assert settings(dataclasses.replace(base, test_end="2014-01-01"))["test_end"] == "2014-01-01"


def test_fit_on_valid_trains_through_validation_and_leaves_test_rows_as_they_are(temporal):
    plain = module(temporal, max_len=8)
    refit = module(temporal, max_len=8, fit_on_valid=True)
    # training rows: inputs = every train + valid event but the last, targets shifted by one
    assert eq(refit.datasets["train"].rows.user, [0, 2])
    t = batch_of(refit, "train")
    got = {int(u): t["item_ids"][r][t["mask"][r]].tolist() for r, u in enumerate(t["user_idx"])}
    assert got == {0: [1, 2], 2: [3]}  # user 1 has one train + valid event: no training row
    plain_train = batch_of(plain, "train")
    assert plain_train["item_ids"][plain_train["mask"]].tolist() == [1, 3]  # before: train only
    assert len(refit.datasets["valid"]) == 0 and refit.skipped["valid"] == {"fit_on_valid": 2}
    assert refit.item_train_counts.tolist() == [0, 2, 1, 2, 0, 1, 0]
    assert plain.item_train_counts.tolist() == [0, 2, 1, 1, 0, 0, 0]
    a, b = batch_of(plain, "test"), batch_of(refit, "test")
    assert a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)
    assert refit.protocol_description().endswith("one-shot, refit on train + valid")


def tiny_config(path: Path, data_dir: Path | None, max_epochs: int, **top) -> Path:
    """A fit config of a tiny ID-only model on a prepared folder (none: the caller gives
    ``data.data_dir``), no logger, no progress bar; ``top``: more top-level entries."""
    import yaml

    data = {"prepare": None, "max_len": 8, "batch_size": 16}
    data |= {"data_dir": str(data_dir)} if data_dir is not None else {}
    trainer = {"max_epochs": max_epochs, "logger": False, "enable_progress_bar": False}
    config = {"trainer": trainer, "data": data, "model": {"d_model": 8}} | top
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_refit_fit_trains_the_given_epochs_without_validation(tmp_path, capsys):
    import torch

    from mmrec.cli import main

    data = make_synthetic_dataset(
        tmp_path / "ds", num_users=40, num_items=40, split="temporal", seed=1
    )
    config = tiny_config(tmp_path / "tiny.yaml", data, 3, name="tiny")
    root = tmp_path / "runs"
    args = [f"--config={config}", f"--trainer.default_root_dir={root}", "--data.fit_on_valid=true"]
    assert main(["fit", *args]) == 0
    assert "training on train + valid events for 3 epochs, no validation" in capsys.readouterr().out
    ckpts = root / "tiny" / "latest" / "checkpoints"
    best, last = (torch.load(ckpts / f"{n}.ckpt", weights_only=True) for n in ("best", "last"))
    assert best["epoch"] == last["epoch"] == 2  # every epoch ran, the last one is "best"
    for name, tensor in last["state_dict"].items():
        assert torch.equal(best["state_dict"][name], tensor), name
    assert main(["test", *args, "--ckpt_path=best"]) == 0
