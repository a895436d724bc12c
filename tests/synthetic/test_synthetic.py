"""Synthetic dataset folders: schema, determinism, and the planted structure later tests rely on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import polars as pl
import pytest

from mmrec.synthetic.dataset import (
    CATEGORIES,
    SEASONS,
    make_item_image,
    make_synthetic_dataset,
    synthetic_raw_interactions,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("syn"), num_users=400, num_items=200, seed=7, with_reviews=True
    )


def read(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    return (
        pl.read_parquet(path / "interactions.parquet"),
        pl.read_parquet(path / "items.parquet"),
        pl.read_parquet(path / "users.parquet"),
        json.loads((path / "meta.json").read_text()),
    )


def test_schema_and_counts(folder):
    inter, items, users, meta = read(folder)
    assert inter.schema == {
        "user_idx": pl.Int32, "item_idx": pl.Int32, "timestamp": pl.Int64, "rating": pl.Float32,
        "review": pl.String, "split": pl.String,
    }  # fmt: skip
    assert meta["source"] == "synthetic" and meta["split"]["protocol"] == "loo"
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (
        400, 200, inter.height,
    )  # fmt: skip
    assert items["item_idx"].to_list() == list(range(1, 201)) and users.height == 400
    assert {"title", "description", "categories", "brand", "price", "image_urls", "season"} <= set(
        items.columns
    )
    assert set(users["location"].unique()) <= {"US-East", "US-West", "UK", "DE", "JP"}
    assert inter["item_idx"].min() >= 1 and inter["item_idx"].max() <= 200
    assert set(inter["rating"].unique().to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (inter["timestamp"] % 86400 == 0).all()  # day granularity
    per_user = inter.group_by("user_idx").len()["len"]
    assert per_user.min() >= 3 and per_user.mean() > 7
    # repeats are dropped and counted, as `mmrec prepare` does by default
    assert inter.select("user_idx", "item_idx").is_unique().all()
    assert meta["num_interactions"] + meta["dropped"]["repeat"] == meta["input_rows"]
    # sorted by user then time; loo: last event test, second last valid
    assert inter.sort(["user_idx", "timestamp"], maintain_order=True).equals(inter)
    last = inter.group_by("user_idx", maintain_order=True).agg(pl.col("split").tail(2))
    assert all(s == ["valid", "test"] for s in last["split"].to_list())
    # text carries the category
    first = items.row(0, named=True)
    cat = first["categories"].split(" > ")[1].lower()
    assert cat in first["title"] and cat in first["description"]


def test_deterministic_by_seed(tmp_path):
    a = read(make_synthetic_dataset(tmp_path / "a", num_users=60, num_items=80, seed=1))
    b = read(make_synthetic_dataset(tmp_path / "b", num_users=60, num_items=80, seed=1))
    c = read(make_synthetic_dataset(tmp_path / "c", num_users=60, num_items=80, seed=2))
    assert all(x.equals(y) for x, y in zip(a[:3], b[:3], strict=True))
    assert a[3]["fingerprint"] == b[3]["fingerprint"] != c[3]["fingerprint"]
    assert not a[0]["item_idx"].equals(c[0]["item_idx"])


def test_seasonal_items_in_their_windows(folder):
    inter, items, _, meta = read(folder)
    d = inter.join(items.select("item_idx", "season"), on="item_idx").with_columns(
        md=pl.from_epoch("timestamp").dt.month().cast(pl.Int32) * 100
        + pl.from_epoch("timestamp").dt.day().cast(pl.Int32)
    )
    for name, ((m0, d0), (m1, d1)) in SEASONS.items():
        assert sorted(meta["seasons"][name]["items"]) == sorted(
            items.filter(pl.col("season") == name)["item_idx"].to_list()
        )
        in_window = pl.col("md").is_between(m0 * 100 + d0, m1 * 100 + d1)
        mine = d.filter(pl.col("season") == name)
        assert mine.height > 20, name
        assert mine.filter(in_window).height / mine.height >= 0.95, name
        # ... and inside the window they are a large share of all purchases
        window = d.filter(in_window)
        assert (window["season"] == name).fill_null(False).mean() >= 0.35, name


def test_successor_structure_beats_popularity(folder):
    inter, *_ = read(folder)
    train = inter.filter(pl.col("split") == "train")
    pairs = train.select(
        prev=pl.col("item_idx").shift(1).over("user_idx"), nxt=pl.col("item_idx")
    ).drop_nulls()
    follow = {}
    for (p, n), k in Counter(zip(pairs["prev"], pairs["nxt"], strict=True)).items():
        follow.setdefault(p, Counter())[n] = k
    top3 = {p: {n for n, _ in c.most_common(3)} for p, c in follow.items()}
    popular = set(train["item_idx"].value_counts(sort=True)["item_idx"][:3].to_list())
    test = inter.select(
        prev=pl.col("item_idx").shift(1).over("user_idx"), nxt=pl.col("item_idx"), split="split"
    ).filter(pl.col("split") == "test")
    hit_seq = np.mean(
        [n in top3.get(p, set()) for p, n in zip(test["prev"], test["nxt"], strict=True)]
    )
    hit_pop = np.mean([n in popular for n in test["nxt"]])
    assert hit_seq > 0.3 and hit_seq > 3 * hit_pop, (hit_seq, hit_pop)


def test_location_shapes_preferences(folder):
    inter, items, users, _ = read(folder)
    d = inter.join(users.select("user_idx", "location"), on="user_idx").join(
        items.select("item_idx", "categories"), on="item_idx"
    )
    share = (
        d.group_by("location", "categories").len()
        .with_columns(p=pl.col("len") / pl.col("len").sum().over("location"))
        .pivot(on="location", index="categories", values="p").fill_null(0)
    )  # fmt: skip
    locs = [c for c in share.columns if c != "categories"]
    tv = max(0.5 * np.abs(share[a] - share[b]).sum() for a in locs for b in locs)
    assert tv > 0.25


def test_images_carry_category(tmp_path):
    imgs = [np.asarray(make_item_image(i, c[0], size=32)) for i, c in enumerate(CATEGORIES)]
    assert imgs[0].shape == (32, 32, 3) and imgs[0].dtype == np.uint8
    assert tuple(imgs[0][16, 16]) == CATEGORIES[0][1]  # lipstick: a red disc in the middle
    assert tuple(imgs[1][16, 16]) == CATEGORIES[1][1]
    colours = [{tuple(p) for p in im.reshape(-1, 3)} for im in imgs]
    for c, (_, rgb, _) in enumerate(CATEGORIES):
        assert rgb in colours[c]
    assert np.array_equal(
        np.asarray(make_item_image(5, "perfume")), np.asarray(make_item_image(5, 2))
    )
    path = make_synthetic_dataset(tmp_path / "img", num_users=10, num_items=40, with_images=True)
    items = pl.read_parquet(path / "items.parquet")
    url = items["image_urls"][3][0]
    assert url.startswith("file://") and Path(urlparse(url).path).exists()


def test_temporal_split_and_second_granularity(tmp_path):
    path = make_synthetic_dataset(
        tmp_path / "t", num_users=100, num_items=80, split="temporal", time_granularity="second",
        valid_start="2014-01-01", test_start="2014-07-01",
    )  # fmt: skip
    inter, _, _, meta = read(path)
    assert meta["split"]["valid_start"] == "2014-01-01"
    assert meta["split"]["test_start_ts"] == 1404172800
    assert meta["time_granularity"] == "second" and (inter["timestamp"] % 86400 != 0).any()
    lo, hi = 1388534400, 1404172800  # 2014-01-01, 2014-07-01 UTC
    expected = np.where(
        inter["timestamp"] >= hi, "test", np.where(inter["timestamp"] >= lo, "valid", "train")
    )
    assert (inter["split"].to_numpy() == expected).all()


def test_too_few_items_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="num_items=10 is too small"):
        make_synthetic_dataset(tmp_path / "x", num_users=5, num_items=10)


def test_raw_interactions():
    a = synthetic_raw_interactions(1000, num_users=50, num_items=30, seed=0)
    assert a.schema == {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64,
                        "rating": pl.Float32}  # fmt: skip
    assert a.height == 1000 and a["item_id"].n_unique() <= 30 and a["user_id"].n_unique() <= 50
    assert a.equals(synthetic_raw_interactions(1000, num_users=50, num_items=30, seed=0))
    counts = a["item_id"].value_counts(sort=True)["count"]
    assert counts[0] > 3 * counts[-1]  # Zipf-popular items
