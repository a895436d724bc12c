"""Tests for mmrec.serving.recommend: time-aware top-K from a checkpoint, Python API and CLI."""

from __future__ import annotations

import json

import lightning as L
import polars as pl
import pytest
import torch

from mmrec.data.datamodule import AmazonDataModule
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.serving.recommend import main
from mmrec.serving.recommender import Recommender
from mmrec.synthetic.dataset import make_synthetic_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small time-aware model trained on synthetic data with planted seasonal items."""
    tmp = tmp_path_factory.mktemp("rec")
    path = make_synthetic_dataset(tmp / "ds", num_users=500, num_items=80, p_seasonal=0.6, seed=2)
    dm = AmazonDataModule(str(path), max_len=10, batch_size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0)
    model = MMRecModule.for_data(
        dm,
        d_model=32,
        event_encoders=[TimestampEncoder(), QueryTimeEncoder()],
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.1),
        lr=3e-3,
    )
    trainer = L.Trainer(
        max_epochs=8,
        default_root_dir=tmp,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    torch.set_num_threads(threads)
    ckpt = tmp / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    items = pl.read_parquet(path / "items.parquet")
    return ckpt, path, items


def _season_ids(items: pl.DataFrame, season: str) -> set[str]:
    return set(items.filter(pl.col("season") == season)["item_id"].to_list())


def test_same_history_december_vs_july(trained):
    ckpt, path, items = trained
    rec = Recommender.from_checkpoint(ckpt)
    history = items.filter(pl.col("season").is_null())["item_id"].to_list()[:4]
    dec = rec.recommend(history, at="2013-12-20", k=10)
    jul = rec.recommend(history, at="2013-07-20", k=10)
    assert len(dec) == len(jul) == 10
    assert [r.item_id for r in dec] != [r.item_id for r in jul]
    assert not set(history) & {r.item_id for r in dec}  # history items are not recommended
    xmas, summer = _season_ids(items, "christmas"), _season_ids(items, "summer")
    top_dec, top_jul = {r.item_id for r in dec[:5]}, {r.item_id for r in jul[:5]}
    assert top_dec & xmas and not top_dec & summer
    assert top_jul & summer and not top_jul & xmas
    assert dec[0].title and dec[0].score >= dec[-1].score


def test_known_user_history_and_unknown_items(trained):
    ckpt, path, items = trained
    rec = Recommender.from_checkpoint(ckpt, data_dir=path)
    user = pl.read_parquet(path / "users.parquet")["user_id"][3]
    out = rec.recommend(user_id=user, at="2014-02-10", k=5)
    seen = set(rec.user_history(user)[0])
    assert len(out) == 5 and not {rec.index[r.item_id] for r in out} & seen
    long = items["item_id"].to_list()[:15]  # longer than max_len=10: the last 10 are encoded
    out = rec.recommend(long, at="2014-02-10", k=3)
    assert len(out) == 3 and not {r.item_id for r in out} & set(long)  # all 15 excluded
    with pytest.warns(UserWarning, match="1 unknown item id.*NOT_AN_ASIN"):
        rec.recommend([items["item_id"][0], "NOT_AN_ASIN"], at="2014-02-10", k=3)
    with pytest.raises(ValueError, match="no known history items"):
        with pytest.warns(UserWarning):
            rec.recommend(["NOT_AN_ASIN"], k=3)


def test_cli_json_and_table(trained, capsys):
    ckpt, path, items = trained
    hist = ",".join(items.filter(pl.col("season").is_null())["item_id"].to_list()[:3])
    argv = ["--ckpt_path", str(ckpt), "--user", "NEWUSER", "--at", "2013-12-20", "--k", "4"]
    assert main([*argv, "--history", hist + ",BOGUS1", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert len(out["recommendations"]) == 4 and out["unknown_items"] == ["BOGUS1"]
    assert out["at"].startswith("2013-12-20") and not out["known_user"]
    assert set(out["recommendations"][0]) == {"item_id", "title", "score"}
    assert "BOGUS1" in captured.err
    assert main([*argv, "--history", hist]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["#", "item", "id"] and len(table) == 2 + 4
    assert main([*argv]) == 2  # unknown user without --history
    assert "pass --history" in capsys.readouterr().err


def test_mmrec_recommend_dispatch(trained, capsys):
    from mmrec.cli import main as mmrec_main

    ckpt, path, items = trained
    user = pl.read_parquet(path / "users.parquet")["user_id"][0]
    argv = ["recommend", "--ckpt_path", str(ckpt), "--user", user, "--k", "3", "--json"]
    assert mmrec_main([*argv, "--data_dir", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["known_user"] and len(out["recommendations"]) == 3


def test_cli_is_a_jsonargparse_command(trained, tmp_path, capsys):
    from mmrec.serving.recommend import build_parser

    ckpt, path, _ = trained
    help_text = build_parser().format_help()
    for option, words in (
        ("--ckpt_path", "rebuilds the model"),
        ("--at", "Default: now"),
        ("--k", "Number of items"),
        ("--trust_module", "importing runs code"),
    ):
        assert option in help_text and words in " ".join(help_text.split()), option
    argv = ["--ckpt_path", str(ckpt), "--user", "u1", "--k", "3", "--at", "2014-01-05"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    cfg_file = tmp_path / "rec.yaml"
    cfg_file.write_text(printed)
    assert "k: 3" in printed and "2014-01-05" in printed
    user = pl.read_parquet(path / "users.parquet")["user_id"][0]
    assert main(["--config", str(cfg_file), "--user", user, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["recommendations"]) == 3 and out["at"].startswith("2014-01-05")


def test_cli_says_which_time_and_refuses_bad_input(trained, tmp_path, capsys):
    ckpt, path, _ = trained
    user = pl.read_parquet(path / "users.parquet")["user_id"][0]
    base = ["--ckpt_path", str(ckpt), "--user", user]
    assert main([*base, "--k", "0"]) == 2
    assert "--k must be >= 1, got 0" in capsys.readouterr().err
    assert main([*base, "--k", "-3"]) == 2
    assert main([*base, "--k", "2"]) == 0  # no --at: now, far after the synthetic data
    err = capsys.readouterr().err
    assert "no --at given: recommending for now" in err
    assert "outside the data's time range" in err
    assert main([*base, "--k", "2", "--at", "2014-01-05"]) == 0
    assert "outside" not in capsys.readouterr().err
    # an interrupted prepare (no meta.json) is refused, as the datamodule refuses it
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("items.parquet", "users.parquet", "interactions.parquet"):
        (broken / name).write_bytes((path / name).read_bytes())
    assert main([*base, "--data_dir", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "has no meta.json" in err and len(err.strip().splitlines()) == 1
    assert main(["--ckpt_path", str(tmp_path / "nope.ckpt"), "--user", user]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"mmrec recommend: error: checkpoint {tmp_path / 'nope.ckpt'} not found"


def test_k_above_the_catalogue_is_capped_and_says_so(trained, capsys):
    ckpt, path, items = trained
    hist = items["item_id"].to_list()[:3]
    argv = ["--ckpt_path", str(ckpt), "--history", ",".join(hist), "--at", "2013-12-20"]
    assert main([*argv, "--k", "1000", "--json"]) == 0
    captured = capsys.readouterr()
    recs = json.loads(captured.out)["recommendations"]
    assert len(recs) == items.height - 3 and not {r["item_id"] for r in recs} & set(hist)
    assert (
        f"mmrec recommend: --k 1000 capped at {items.height - 3}: the catalogue has "
        f"{items.height} items and those in the history are not recommended"
    ) in captured.err
    assert main([*argv, "--k", str(items.height - 3)]) == 0
    assert "capped" not in capsys.readouterr().err
