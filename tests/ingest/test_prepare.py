"""`mmrec prepare`: ordering, duplicates, k-core, ids, splits, meta.json, CLI and real sets."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import polars as pl
import pytest

from mmrec.ingest.errors import DataError
from mmrec.ingest.prepare import (
    PrepareConfig,
    build_parser,
    config_from_args,
    main,
    prepare_dataset,
)

REPO = Path(__file__).resolve().parents[2]
COLS = {"user_id": "u", "item_id": "i", "timestamp": "t", "rating": "r"}


def _table(tmp_path: Path, rows: list[tuple], name: str = "t.csv") -> Path:
    path = tmp_path / name
    text = "u,i,t,r\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    if not path.exists() or path.read_text() != text:  # keep the mtime (fingerprint) when unchanged
        path.write_text(text)
    return path


def _prep(tmp_path: Path, rows: list[tuple], **kw) -> tuple[Path, pl.DataFrame, dict]:
    cfg = {
        "source": "tabular",
        "reviews": str(_table(tmp_path, rows)),
        "columns": COLS,
        "kcore": 0,
        "out": str(tmp_path / "o"),
        "report": False,
        **kw,
    }
    out = prepare_dataset(PrepareConfig(**cfg), progress=False)
    return (
        out,
        pl.read_parquet(out / "interactions.parquet"),
        json.loads((out / "meta.json").read_text()),
    )


def test_ties_keep_file_order_and_ids_follow_first_appearance(tmp_path):
    day = 86400
    rows = [
        ("bob", "z", 3 * day, 1),
        ("ann", "y", 2 * day, 2),
        ("bob", "x", 3 * day, 3),
        ("bob", "a", 1 * day, 4),
        ("bob", "m", 3 * day, 5),
    ]
    out, inter, meta = _prep(tmp_path, rows)
    users = pl.read_parquet(out / "users.parquet")
    items = pl.read_parquet(out / "items.parquet")
    assert users["user_id"].to_list() == ["bob", "ann"]  # user 0 appears first in the file
    assert items["item_id"].to_list() == ["z", "y", "x", "a", "m"] and items[
        "item_idx"
    ].to_list() == [1, 2, 3, 4, 5]
    bob = inter.filter(pl.col("user_idx") == 0)
    assert bob["rating"].to_list() == [
        4,
        1,
        3,
        5,
    ]  # a (day 1), then z, x, m in file order (not z<x<m sorted)
    assert bob["split"].to_list() == ["train", "train", "valid", "test"]
    assert inter.filter(pl.col("user_idx") == 1)["split"].to_list() == [
        "train"
    ]  # < 3 events: all train
    assert inter.schema == pl.Schema(
        {
            "user_idx": pl.Int32,
            "item_idx": pl.Int32,
            "timestamp": pl.Int64,
            "rating": pl.Float32,
            "review": pl.String,
            "split": pl.String,
        }
    )
    assert meta["time_granularity"] == "day"


@pytest.mark.parametrize(
    "n_events, expected",
    [
        (1, ["train"]),
        (2, ["train", "train"]),
        (3, ["train", "valid", "test"]),
        (5, ["train", "train", "train", "valid", "test"]),
    ],
)
def test_loo_split_by_sequence_length(tmp_path, n_events, expected):
    rows = [
        ("a", "x", 1, 1),
        ("a", "y", 2, 1),
        ("a", "z", 3, 1),
    ]  # neighbours of 3 events each side
    rows += [("b", f"i{k}", 10 + k, 1) for k in range(n_events)] + [
        ("c", "x", 1, 1),
        ("c", "y", 2, 1),
        ("c", "z", 3, 1),
    ]
    _, inter, _ = _prep(tmp_path, rows)
    assert inter.filter(pl.col("user_idx") == 1)["split"].to_list() == expected
    assert (
        inter.filter(pl.col("user_idx") != 1)["split"].to_list() == ["train", "valid", "test"] * 2
    )


def test_duplicates_and_repeats_policy(tmp_path):
    rows = [
        ("u", "a", 10, 5),
        ("u", "a", 10, 5),
        ("u", "b", 20, 4),
        ("u", "a", 30, 3),
        ("u", "c", 40, 5),
    ]
    _, inter, meta = _prep(tmp_path, rows)
    assert meta["dropped"] == {"duplicate": 1, "repeat": 1}
    assert inter["rating"].to_list() == [5, 4, 5]  # the earliest (u, a) is kept
    assert meta["time_granularity"] == "second"
    _, inter, meta = _prep(tmp_path, rows, keep_repeats=True, out=str(tmp_path / "o2"))
    assert meta["dropped"] == {"duplicate": 1}
    assert inter["rating"].to_list() == [5, 4, 3, 5]
    assert meta["num_interactions"] + sum(meta["dropped"].values()) == meta["input_rows"] == 5


def test_kcore_is_iterative(tmp_path):
    # 2-core: d has one user -> w keeps 1 event -> c keeps 1 user -> x keeps 1 event: only
    # u, v x a, b stay (a single pass would drop (w, d) alone).
    pairs = [
        ("u", "a"),
        ("u", "b"),
        ("v", "a"),
        ("v", "b"),
        ("w", "c"),
        ("w", "d"),
        ("x", "c"),
        ("x", "a"),
    ]
    rows = [(u, i, t, 5) for t, (u, i) in enumerate(pairs)]
    out, inter, meta = _prep(tmp_path, rows, kcore=2)
    assert meta["dropped"]["kcore"] == 4 and meta["num_interactions"] == 4
    users = pl.read_parquet(out / "users.parquet")["user_id"].to_list()
    items = pl.read_parquet(out / "items.parquet")["item_id"].to_list()
    assert (users, items) == (["u", "v"], ["a", "b"])
    with pytest.raises(DataError, match="no interactions left after cleaning.*lower --kcore"):
        _prep(tmp_path, rows, kcore=3, out=str(tmp_path / "o3"))


def test_temporal_split_has_no_future_in_history(tmp_path):
    day = 86400
    rows = [
        (f"u{k % 4}", f"i{k % 13}", 18262 * day + k * day // 2, 5) for k in range(40)
    ]  # from 2020-01-01
    _, inter, meta = _prep(
        tmp_path, rows, split="temporal", valid_start="2020-01-10", test_start="2020-01-15"
    )
    valid_ts, test_ts = 18262 * day + 9 * day, 18262 * day + 14 * day
    splits = inter.group_by("split").agg(
        pl.col("timestamp").min().alias("lo"), pl.col("timestamp").max().alias("hi")
    )
    span = {r["split"]: (r["lo"], r["hi"]) for r in splits.iter_rows(named=True)}
    assert (
        span["train"][1] < valid_ts <= span["valid"][0]
        and span["valid"][1] < test_ts <= span["test"][0]
    )
    assert meta["split"]["protocol"] == "temporal" and meta["split"]["test_start_ts"] == test_ts
    with pytest.raises(DataError, match="needs --valid_start and --test_start"):
        _prep(tmp_path, rows, split="temporal", out=str(tmp_path / "o2"))


def test_meta_json_written_last_reuse_and_incomplete_folder(tmp_path, capsys):
    rows = [("u", "a", 86400, 5), ("u", "b", 2 * 86400, 4), ("v", "a", 86400, 3)]
    out, _, meta = _prep(tmp_path, rows)
    assert {
        "num_users",
        "num_items",
        "num_interactions",
        "time_granularity",
        "split",
        "dropped",
        "fingerprint",
        "source",
        "version",
        "category",
        "input_rows",
    } <= set(meta)
    assert not list(out.glob("*.tmp"))
    stamp = (out / "meta.json").stat().st_mtime_ns
    _prep(tmp_path, rows)  # same inputs and settings: reused
    assert (
        out / "meta.json"
    ).stat().st_mtime_ns == stamp and "up to date" in capsys.readouterr().out
    with pytest.raises(DataError, match="--overwrite true"):
        _prep(tmp_path, rows, kcore=1)
    (out / "meta.json").unlink()  # incomplete folder: prepared again
    (out / "interactions.parquet").write_bytes(b"garbage")
    _, inter, meta = _prep(tmp_path, rows)
    assert "incomplete" in capsys.readouterr().out and inter.height == 3
    _, _, meta2 = _prep(tmp_path, rows, kcore=1, overwrite=True)
    assert meta2["fingerprint"] != meta["fingerprint"]


def test_report_files(tmp_path):
    rows = [(f"u{k % 5}", f"i{k % 3}", 1577836800 + k * 86400 * 9, 5) for k in range(30)]
    out, _, _ = _prep(tmp_path, rows, report=True)
    assert (out / "report" / "trends.png").read_bytes()[:4] == b"\x89PNG"
    top = pl.read_csv(out / "report" / "top_items_per_month.csv")
    assert top.columns == ["month", "rank", "item_idx", "item_id", "title", "interactions"]
    assert top.filter(pl.col("month") == "2020-01")["interactions"].sum() == 4  # days 0, 9, 18, 27
    assert "| month | rank |" in (out / "report" / "top_items_per_month.md").read_text()


def test_cli_config_and_out_override(tmp_path, capsys):
    reviews = _table(tmp_path, [("u", "a", 86400, 5), ("u", "b", 2 * 86400, 4)])
    config = tmp_path / "c.yaml"
    config.write_text(
        f"source: tabular\nreviews: {reviews}\ncolumns: {json.dumps(COLS)}\nkcore: 0\n"
        f"out: {tmp_path / 'ignored'}\nreport: false\n"
    )
    assert (
        main(["--config", str(config), "--out", str(tmp_path / "cli"), "--progress", "false"]) == 0
    )
    assert (tmp_path / "cli" / "meta.json").exists() and not (tmp_path / "ignored").exists()
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for flag in (
        "--source",
        "--category",
        "--reviews",
        "--meta",
        "--out",
        "--kcore",
        "--split",
        "--valid_start",
        "--test_start",
        "--columns",
        "--item_text",
        "--max_bad_fraction",
        "--keep_repeats",
    ):
        assert flag in help_text
    assert "Iteratively keep users and items" in help_text


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs" / "data").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_data_configs_parse(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith(f"# mmrec prepare --config configs/data/{config.name}")
    cfg, _ = config_from_args(["--config", str(config)])
    assert cfg.out.startswith("data/") and cfg.category
    text = " ".join(build_parser().format_help().split())
    for field in dataclasses.fields(PrepareConfig):  # every option, with its docstring text
        assert f"--{field.name}" in text, field.name
    assert "Iteratively keep users and items with at least this many interactions" in text


def test_shipped_gift_cards_prepares(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert (
        main(
            [
                "--config",
                "configs/data/gift_cards_shipped.yaml",
                "--out",
                str(tmp_path / "g"),
                "--progress",
                "false",
                "--report",
                "false",
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "g" / "meta.json").read_text())
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (453, 147, 2941)
    assert (
        meta["dropped"] == {"duplicate": 0, "repeat": 7, "kcore": 24} and meta["input_rows"] == 2972
    )
    assert meta["items_without_meta"] == 0


@pytest.mark.shared_data
def test_real_beauty_2014(shared_data, tmp_path):
    folder = shared_data / "amazon2014-beauty"
    cfg, _ = config_from_args(
        [
            "--config",
            str(REPO / "configs/data/beauty2014.yaml"),
            "--out",
            str(tmp_path / "b"),
            "--reviews",
            str(folder / "interactions.tsv"),
            "--item_text",
            str(folder / "item_title_keywords.txt"),
            "--item_attributes",
            str(folder / "item_attributes.tsv"),
        ]
    )
    out = prepare_dataset(cfg, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (
        22363,
        12101,
        198502,
    )
    assert meta["dropped"] == {"duplicate": 0, "repeat": 0} and meta["time_granularity"] == "day"
    tsv = pl.read_csv(folder / "interactions.tsv", separator="\t")
    inter = pl.read_parquet(out / "interactions.parquet")
    users = pl.read_parquet(out / "users.parquet")
    items = pl.read_parquet(out / "items.parquet")
    # ids follow first appearance, which is the benchmark's own numbering
    assert (
        users["user_id"].to_list()
        == tsv.unique("user_idx", keep="first", maintain_order=True)["reviewerID"].to_list()
    )
    assert (inter["item_idx"].cast(pl.Int64) == tsv["item_idx"]).all()  # same rows, same order
    assert (inter["user_idx"].cast(pl.Int64) + 1 == tsv["user_idx"]).all()
    for user in [1, 2, 777, 12345, 22363]:  # last TSV row is test, second last valid
        rows = tsv.filter(pl.col("user_idx") == user)
        ours = inter.filter(pl.col("user_idx") == user - 1).join(
            items, on="item_idx", maintain_order="left"
        )
        assert ours.filter(pl.col("split") == "test")["item_id"].to_list() == [rows["asin"][-1]]
        assert ours.filter(pl.col("split") == "valid")["item_id"].to_list() == [rows["asin"][-2]]
        assert ours["item_id"].to_list() == rows["asin"].to_list()
    untitled = sum(
        len(line.split()) < 2
        for line in (folder / "item_title_keywords.txt").read_text().splitlines()
    )
    assert meta["items_without_meta"] == 0 and items["title"].null_count() == untitled == 1
    assert os.path.getsize(out / "report" / "trends.png") > 1000
    # S3-Rec's attribute ids (brand and category nodes) of every item, matched by ASIN
    attrs = pl.read_csv(folder / "item_attributes.tsv", separator="\t", infer_schema=False)
    assert meta["items_without_attributes"] == 0
    joined = items.join(attrs, left_on="item_id", right_on="asin", suffix="_tsv")
    assert len(joined) == 12101 and (joined["attributes"] == joined["attributes_tsv"]).all()
    assert (joined["item_idx"].cast(pl.String) == joined["item_idx_tsv"]).all()


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "category, kcore",
    [("All_Beauty", 5), ("Gift_Cards", 5), ("Appliances", 3), ("AMAZON_FASHION", 5)],
)
def test_real_2018_files(shared_data, tmp_path, category, kcore):
    folder = shared_data / "amazon2018-5core"
    meta_file = folder / f"meta_{category}.json.gz"
    cfg = PrepareConfig(
        source="amazon2018",
        category=category,
        reviews=str(folder / f"{category}_5.json.gz"),
        meta=str(meta_file) if meta_file.exists() else None,
        kcore=kcore,
        out=str(tmp_path / category),
        report=False,
    )
    meta = json.loads((prepare_dataset(cfg, progress=False) / "meta.json").read_text())
    assert meta["num_interactions"] + sum(meta["dropped"].values()) == meta["input_rows"]
    expected_rows = {
        "All_Beauty": 5269,
        "Gift_Cards": 2972,
        "Appliances": 2277,
        "AMAZON_FASHION": 3176,
    }
    assert meta["input_rows"] == expected_rows[category]
    assert meta["dropped"]["kcore"] > 0
    if category != "Gift_Cards":  # the README: raw files contain exact duplicate reviews
        assert meta["dropped"]["duplicate"] > 0
    if category == "Appliances":  # 47 users: after de-duplication no 5-core is left, and it says so
        cfg.kcore, cfg.out = 5, str(tmp_path / "app5")
        with pytest.raises(DataError, match="no interactions left after cleaning"):
            prepare_dataset(cfg, progress=False)
    inter = pl.read_parquet(tmp_path / category / "interactions.parquet")
    counts = (
        inter.group_by("user_idx").len()["len"].min(),
        inter.group_by("item_idx").len()["len"].min(),
    )
    assert min(counts) >= kcore


def test_ingest_codes_round_trip_and_kcore_mask_matches_naive(tmp_path):
    import numpy as np

    from mmrec.ingest.clean import kcore_mask
    from mmrec.ingest.stream import Ingest

    sink = Ingest(tmp_path, keep_review=False)
    for users in (["b", "ä", "b"], ["c", "ä"]):  # two frames: the codes carry over
        n = len(users)
        sink.add(
            sink.encode(
                pl.DataFrame(
                    {
                        "user_id": users,
                        "item_id": ["x"] * n,
                        "timestamp": [1] * n,
                        "rating": [None] * n,
                        "review": [None] * n,
                    },
                    schema_overrides={"rating": pl.Float32, "review": pl.String},
                )
            )
        )
    data = sink.finish()
    codes = data.column("u")
    assert codes.tolist() == [0, 1, 0, 2, 1] and data.users == 3  # single thread: file order
    assert data.user_ids(codes).to_list() == ["b", "ä", "b", "c", "ä"]

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 60, 400), rng.zipf(1.5, 400) % 40
    alive = set(range(400))
    while True:  # naive iterative 4-core
        uc, ic = {}, {}
        for r in alive:
            uc[users[r]] = uc.get(users[r], 0) + 1
            ic[items[r]] = ic.get(items[r], 0) + 1
        keep = {r for r in alive if uc[users[r]] >= 4 and ic[items[r]] >= 4}
        if keep == alive:
            break
        alive = keep
    mask = kcore_mask(users, items, 4)
    assert set(np.flatnonzero(mask)) == alive and 0 < len(alive) < 400


def test_review_text_setting_keeps_older_folders_valid():
    from mmrec.ingest.settings import settings

    base = PrepareConfig(source="tabular", kcore=0)
    assert "review_text" not in settings(base)  # same fingerprint as before the option existed
    assert settings(dataclasses.replace(base, review_text=True))["review_text"] is True


def test_item_attributes_table(tmp_path):
    reviews = tmp_path / "r.csv"
    reviews.write_text(
        "user,item,ts\n"
        + "".join(f"u{u},i{i},{86400 * (u + i + 1)}\n" for u in range(4) for i in range(3))
    )
    attrs = tmp_path / "attrs.tsv"
    attrs.write_text("asin\tattributes\ni0\t7 8\ni1\t  \ni0\t9\nzz\t1\n")
    cfg = PrepareConfig(
        source="tabular",
        out=str(tmp_path / "o"),
        reviews=str(reviews),
        columns={"user_id": "user", "item_id": "item", "timestamp": "ts"},
        kcore=0,
        report=False,
        item_attributes=str(attrs),
    )
    out = prepare_dataset(cfg, progress=False)
    items = pl.read_parquet(out / "items.parquet").sort("item_idx")
    assert items["attributes"].to_list() == ["7 8", None, None]  # first row of i0 wins
    meta = json.loads((out / "meta.json").read_text())
    assert meta["items_without_attributes"] == 2
    assert [f["file"] for f in meta["input_files"]] == ["r.csv", "attrs.tsv"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("asin\tbrand\ni0\tx\n")
    with pytest.raises(DataError, match="needs an item id column .* and an 'attributes' column"):
        prepare_dataset(
            dataclasses.replace(cfg, out=str(tmp_path / "o2"), item_attributes=str(bad)),
            progress=False,
        )
