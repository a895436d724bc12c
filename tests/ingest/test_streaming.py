"""The streaming `mmrec prepare`: bounded frames, metadata decoded for kept items only, bulk
conversions equal to the Python ones, review text in output order, the raw-file generator."""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import random
from pathlib import Path

import polars as pl
import pytest

from mmrec.ingest import metalines, outputs
from mmrec.ingest.errors import BadLines, DataError
from mmrec.ingest.items import META_KEYS, records_to_items
from mmrec.ingest.lines import LineScan
from mmrec.ingest.prepare import PrepareConfig, prepare_dataset
from mmrec.synthetic.raw import write_raw_files
from mmrec.text import clean_html, clean_html_series

T0 = 1_400_000_000


def _prepare(tmp_path: Path, name: str = "out", **kw) -> tuple[Path, dict]:
    cfg = PrepareConfig(**{"out": str(tmp_path / name), "report": False, **kw})
    out = prepare_dataset(cfg, progress=False)
    return out, json.loads((out / "meta.json").read_text())


@pytest.mark.parametrize("release", ["amazon2014", "amazon2018", "amazon2023"])
def test_generated_raw_files_every_row_accounted(tmp_path, release):
    raw = write_raw_files(tmp_path / "raw", release, 6000, seed=3)
    again = write_raw_files(tmp_path / "again", release, 6000, seed=3)
    for a, b in ((raw.reviews, again.reviews), (raw.meta, again.meta)):
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    out, info = _prepare(
        tmp_path, source=release, reviews=str(raw.reviews), meta=str(raw.meta), kcore=3
    )
    assert info["input_rows"] == 6000
    assert info["num_interactions"] + sum(info["dropped"].values()) == 6000
    assert info["dropped"]["duplicate"] >= raw.planted["duplicate"] > 0
    inter = pl.read_parquet(out / "interactions.parquet")
    assert inter.height == info["num_interactions"] and inter["review"].null_count() == inter.height
    assert inter.group_by("user_idx").len()["len"].min() >= 3
    items = pl.read_parquet(out / "items.parquet")
    assert items["title"].str.contains("<", literal=True).sum() == 0
    fragments = info["item_fields"]["markup_only"]["title"]
    assert (fragments > 0) == (release == "amazon2018")  # the 2018 debris, counted


def test_line_frames_stay_small(tmp_path):
    path = tmp_path / "big.json.gz"
    lines = [json.dumps({"k": k}) for k in range(30_000)]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    frames = list(LineScan(path))
    assert max(f.height for f in frames) <= LineScan.BATCH
    assert pl.concat(frames)["line"].to_list() == list(range(1, 30_001))


def test_metadata_of_items_not_kept_is_not_decoded(tmp_path, monkeypatch):
    meta = tmp_path / "meta.json.gz"
    records = [{"asin": f"I{k}", "title": f"T{k}", "category": ["c"]} for k in range(2000)]
    lines = [json.dumps(r) for r in records] + ['{"title": "no id"}']
    meta.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    decoded = []
    real = metalines._decode

    def counting(frame, *args):
        decoded.extend(frame["line"].to_list())
        return real(frame, *args)

    monkeypatch.setattr(metalines, "_decode", counting)
    bad = BadLines(str(meta))
    kept = pl.Series(["I5", "I1999", "I77"])
    rows = metalines.read_meta_lines(meta, META_KEYS["amazon2018"], bad, kept)
    assert sorted(rows["item_id"].to_list()) == ["I1999", "I5", "I77"]
    assert sorted(decoded) == [6, 78, 2000, 2001]  # the kept ones and the line without an id
    assert bad.total == 2001 and bad.num_bad == 0


@pytest.mark.parametrize("release", ["amazon2014", "amazon2018", "amazon2023"])
def test_bulk_metadata_conversion_equals_python(tmp_path, release):
    """The vectorised reading of official metadata gives the items that parsing each record
    in Python (``records_to_items``) gives."""
    raw = write_raw_files(tmp_path, release, 3000, seed=5)
    bad = BadLines(str(raw.meta))
    bulk = metalines.read_meta_lines(raw.meta, META_KEYS[release], bad).drop("_line")
    records = []
    for line in gzip.decompress(raw.meta.read_bytes()).decode("utf-8", "replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            try:
                records.append(ast.literal_eval(line))
            except (ValueError, SyntaxError):
                continue
    python = records_to_items(records, META_KEYS[release])
    python = python.filter(pl.col("item_id").is_not_null())
    assert bulk.height == python.height and bad.num_bad == raw.planted["meta_broken"]
    assert bulk.with_columns(pl.col("image_urls").fill_null([])).equals(python)


def test_clean_html_series_equals_clean_html():
    rnd = random.Random(0)
    pieces = ["<", ">", "&", "& ", "amp;", "amp", "a", " ", "  ", "\n", "/", "!", "span ", '"']
    pieces += ["\x1f", "\xa0", "lt;", "#39;", "nbsp;", "<b>", "</b>", "&amp;", "\t", "#x27;"]
    values = ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 14))) for _ in range(5000)]
    values += [None, "Rose &amp; Oud <b>Soap</b>", "size < 5", "Bath & Body", "&eacute;t&eacute;"]
    got = clean_html_series(pl.Series(values, dtype=pl.String)).to_list()
    assert got == [clean_html(v) for v in values]


def test_review_text_is_kept_when_asked_in_output_order(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "BUCKET_ROWS", 7)  # several buckets for a small file
    rows = [(f"U{k % 9}", f"I{k % 13}", T0 + (k * 7919) % 1000 * 3600) for k in range(300)]
    path = tmp_path / "r.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"user_id": u, "parent_asin": i, "timestamp": t * 1000, "rating": 3.0,
                 "text": f"{u} on {i} at {t}"}
            ) + "\n"
            for u, i, t in rows
        )
    )  # fmt: skip
    base = {"source": "amazon2023", "reviews": str(path), "kcore": 0, "keep_repeats": True}
    out, _ = _prepare(tmp_path, **base, review_text=True)
    inter = pl.read_parquet(out / "interactions.parquet")
    users = pl.read_parquet(out / "users.parquet")
    items = pl.read_parquet(out / "items.parquet")
    named = inter.join(users, on="user_idx", maintain_order="left").join(
        items, on="item_idx", maintain_order="left"
    )
    expected = pl.format("{} on {} at {}", "user_id", "item_id", "timestamp")
    assert (named["review"] == named.select(expected).to_series()).all()
    plain, _ = _prepare(tmp_path, "plain", **base)
    without = pl.read_parquet(plain / "interactions.parquet")
    assert without.drop("review").equals(inter.drop("review"))
    assert without["review"].null_count() == without.height


def test_exact_duplicates_need_the_same_review_text(tmp_path):
    def line(text):
        return {"reviewerID": "U", "asin": "I", "unixReviewTime": T0, "overall": 4.0,
                "reviewText": text}  # fmt: skip

    records = [line("a"), line("a"), line("b")]
    records += [{**line("z"), "asin": f"J{k}", "unixReviewTime": T0 + k} for k in range(3)]
    path = tmp_path / "r.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    base = {"source": "amazon2018", "reviews": str(path), "kcore": 0}
    _, info = _prepare(tmp_path, **base)
    assert info["dropped"] == {"duplicate": 1, "repeat": 1}
    _, info = _prepare(tmp_path, "kept", **base, keep_repeats=True)
    assert info["dropped"] == {"duplicate": 1} and info["num_interactions"] == 5


def test_ties_keep_file_order_across_frames(tmp_path):
    """A user's same-day events far apart in a file of many frames stay in file order."""
    n = 3 * LineScan.BATCH
    lines = [
        {"reviewerID": "U" if k % 997 == 0 else f"V{k}", "asin": f"I{k}", "overall": 5.0,
         "unixReviewTime": T0}
        for k in range(n)
    ]  # fmt: skip
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in lines).encode()))
    out, _ = _prepare(tmp_path, source="amazon2018", reviews=str(path), kcore=0)
    inter = pl.read_parquet(out / "interactions.parquet")
    items = pl.read_parquet(out / "items.parquet")
    u = inter.filter(pl.col("user_idx") == 0).join(items, on="item_idx", maintain_order="left")
    assert u["item_id"].to_list() == [f"I{k}" for k in range(0, n, 997)]


def test_blank_lines_keep_line_numbers_and_bad_gzip_is_named(tmp_path):
    good = json.dumps({"reviewerID": "U", "asin": "I", "unixReviewTime": T0})
    text = f"{good}\n\n   \r\n{good}\r\n{{broken\n" + "\n".join([good] * 300) + "\n"
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataError, match=r"r.json.gz: 1 of 303 lines bad \(malformed=1\); line 5"):
        _prepare(tmp_path, source="amazon2018", reviews=str(path), max_bad_fraction=0.0)
    fake = tmp_path / "fake.json.gz"
    fake.write_text(good)
    with pytest.raises(DataError, match=r"fake.json.gz: not a valid gzip file"):
        _prepare(tmp_path, "o2", source="amazon2018", reviews=str(fake))
