"""Tests of raw readers: 2014/2018/2023 reviews and metadata, 2023 benchmark CSVs, tabular files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from mmrec.ingest.errors import BadLines
from mmrec.ingest.items import META_KEYS, clean_items, read_item_text
from mmrec.ingest.metalines import read_meta_lines
from mmrec.ingest.prepare import PrepareConfig, prepare_dataset
from mmrec.ingest.readers import BenchmarkCsvReader, TableReader


def _gz(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def test_2014_reviews_and_python_literal_metadata(tmp_path):
    reviews = _gz(
        tmp_path / "reviews_Beauty_5.json.gz",
        [
            json.dumps(
                {
                    "reviewerID": "A",
                    "asin": "X1",
                    "overall": 4.0,
                    "unixReviewTime": 1300000000,
                    "reviewText": "nice",
                }
            ),
            json.dumps(
                {"reviewerID": "A", "asin": "X2", "overall": 5.0, "unixReviewTime": 1300086400}
            ),
        ],
    )
    meta = _gz(
        tmp_path / "meta_Beauty.json.gz",
        [
            "{'asin': 'X1', 'title': 'Rose &amp; Oud <b>Soap</b>', 'price': 12.5, "
            "'imUrl': 'http://i/x1.jpg', "
            "'categories': [['Beauty', 'Skin Care'], ['Beauty', 'Bath']], 'brand': 'Acme', "
            "'description': '<p>Smells   good</p>'}",
            "{'asin': 'X2', 'title': 'Comb'}",
        ],
    )
    out = prepare_dataset(
        PrepareConfig(
            source="amazon2014",
            reviews=str(reviews),
            meta=str(meta),
            kcore=0,
            out=str(tmp_path / "o"),
            report=False,
            review_text=True,
        ),
        progress=False,
    )
    items = pl.read_parquet(out / "items.parquet")
    first = items.row(0, named=True)
    assert first == {
        "item_idx": 1,
        "item_id": "X1",
        "title": "Rose & Oud Soap",
        "description": "Smells good",
        "categories": "Beauty > Skin Care; Beauty > Bath",
        "brand": "Acme",
        "price": 12.5,
        "image_urls": ["http://i/x1.jpg"],
    }
    assert items.row(1, named=True)["image_urls"] == [] and items["price"][1] is None
    inter = pl.read_parquet(out / "interactions.parquet")
    assert inter["review"].to_list() == ["nice", None]
    assert inter["rating"].to_list() == [4.0, 5.0]


def test_2018_metadata_fields(tmp_path):
    record = {
        "asin": "G1",
        "title": "Gift&nbsp;Card",
        "price": "$1,250.00",
        "brand": "Amazon",
        "category": ["Gift Cards", "Gift Cards"],
        "description": ["Line one.", "<i>Line two.</i>"],
        "image": ["http://i/small.jpg"],
        "details": {"\n  Weight: ": "3 oz"},
    }
    bad = BadLines("m")
    path = tmp_path / "meta_Gift_Cards.json"
    path.write_text(json.dumps(record) + "\n")
    items = clean_items(read_meta_lines(path, META_KEYS["amazon2018"], bad))
    row = items.row(0, named=True)
    assert row["price"] == 1250.0 and row["title"] == "Gift Card"
    assert (
        row["description"] == "Line one. Line two."
        and row["categories"] == "Gift Cards > Gift Cards"
    )
    assert row["image_urls"] == ["http://i/small.jpg"] and bad.num_bad == 0


def test_2023_jsonl_reviews_ms_and_metadata(tmp_path):
    reviews = tmp_path / "All_Beauty.jsonl"
    rows = [
        ("U1", "P1", 1588687728923),
        ("U1", "P2", 1588687728924),
        ("U1", "P3", 1600000000000),
        ("U2", "P1", 1600000000500),
    ]
    reviews.write_text(
        "\n".join(
            json.dumps(
                {
                    "user_id": u,
                    "parent_asin": p,
                    "asin": "child",
                    "timestamp": t,
                    "rating": 5.0,
                    "title": "t",
                    "text": "great",
                }
            )
            for u, p, t in rows
        )
    )
    meta = _gz(
        tmp_path / "meta_All_Beauty.jsonl.gz",
        [
            json.dumps(
                {
                    "parent_asin": "P1",
                    "title": "Serum",
                    "store": "BrandX",
                    "price": None,
                    "main_category": "All Beauty",
                    "categories": [],
                    "description": [],
                    "images": [{"thumb": "t.jpg", "large": "l.jpg", "hi_res": None}],
                    "details": {"Brand": "Other"},
                }
            )
        ],
    )
    out = prepare_dataset(
        PrepareConfig(
            source="amazon2023",
            reviews=str(reviews),
            meta=str(meta),
            kcore=0,
            out=str(tmp_path / "o"),
            report=False,
        ),
        progress=False,
    )
    inter = pl.read_parquet(out / "interactions.parquet")
    assert inter["timestamp"].to_list() == [1588687728, 1588687728, 1600000000, 1600000000]
    assert inter["split"].to_list() == ["train", "valid", "test", "train"]
    item = pl.read_parquet(out / "items.parquet").row(0, named=True)
    assert (item["brand"], item["categories"], item["image_urls"]) == (
        "BrandX",
        "All Beauty",
        ["l.jpg"],
    )
    assert json.loads((out / "meta.json").read_text())["time_granularity"] == "second"


def test_benchmark_csvs_are_rebuilt_in_train_valid_test_order(tmp_path):
    header = "user_id,parent_asin,rating,timestamp,history"
    (tmp_path / "C.train.csv").write_text(
        f"{header}\nU,A,5.0,1000000000000,\nU,B,4.0,1000000000000,A\n"
    )
    (tmp_path / "C.valid.csv").write_text(f"{header}\nU,C,3.0,1000000000000,A B\n")
    (tmp_path / "C.test.csv").write_text(f"{header}\nU,D,2.0,1000000001000,A B C\n")
    paths = [tmp_path / f"C.{s}.csv" for s in ("test", "valid", "train")]
    raw = BenchmarkCsvReader().read(paths, 0.01)
    assert raw.frame["item_id"].to_list() == ["A", "B", "C", "D"]
    assert raw.frame["timestamp"].to_list() == [1000000000, 1000000000, 1000000000, 1000000001]


def test_tabular_parquet_with_iso_dates(tmp_path):
    pl.DataFrame(
        {
            "who": ["a", "a", "b"],
            "what": [10, 11, 10],
            "when": ["2020-01-02", "2020-01-01", "2020-03-01"],
            "stars": [1.0, 2.0, None],
        }
    ).write_parquet(tmp_path / "t.parquet")
    reader = TableReader(
        {"user_id": "who", "item_id": "what", "timestamp": "when", "rating": "stars"}
    )
    raw = reader.read([tmp_path / "t.parquet"], 0.0)
    assert raw.frame["timestamp"].to_list() == [1577923200, 1577836800, 1583020800]
    assert (
        raw.frame["item_id"].to_list() == ["10", "11", "10"]
        and raw.frame["rating"].null_count() == 1
    )


def test_item_text_file(tmp_path):
    path = tmp_path / "item_title_keywords.txt"
    path.write_text("B01 rene furterer complexe 5\nB02\n\nB03 comb\n")
    items = read_item_text(path)
    assert items.select("item_id", "title").rows() == [
        ("B01", "rene furterer complexe 5"),
        ("B02", None),
        ("B03", "comb"),
    ]


@pytest.mark.shared_data
def test_real_2023_benchmark_ms_timestamps(shared_data, tmp_path):
    folder = shared_data / "amazon2023-all-beauty"
    files = [str(folder / f"All_Beauty.{s}.csv") for s in ("train", "valid", "test")]
    out = prepare_dataset(
        PrepareConfig(
            source="amazon2023",
            reviews=files,
            meta=str(folder / "items_meta_filtered.csv"),
            out=str(tmp_path / "o"),
            report=False,
        ),
        progress=False,
    )
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (253, 356, 2535)
    inter = pl.read_parquet(out / "interactions.parquet")
    users = pl.read_parquet(out / "users.parquet")
    items = pl.read_parquet(out / "items.parquet")
    first = (
        inter.join(users, on="user_idx")
        .join(items, on="item_idx")
        .filter(
            (pl.col("user_id") == "AFSKPY37N3C43SOI5IEXEK5JSIYA")
            & (pl.col("item_id") == "B07J3GH1W1")
        )
    )
    assert first["timestamp"].to_list() == [1547589356]  # 1547589356557 ms in the CSV
    # leave-one-out on the rebuilt sequences gives back the official test and valid rows
    for split in ("test", "valid"):
        official = pl.read_csv(folder / f"All_Beauty.{split}.csv").select(
            "user_id", item_id="parent_asin"
        )
        ours = (
            inter.filter(pl.col("split") == split)
            .join(users, on="user_idx")
            .join(items, on="item_idx")
        )
        assert ours.select("user_id", "item_id").sort("user_id").equals(official.sort("user_id"))
    assert items["title"].null_count() == 0
