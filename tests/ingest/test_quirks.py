"""One test per quirk of real raw files: HTML debris as a whole field, mixed timestamp units and
impossible times, a gzip file cut in half, invalid UTF-8 in metadata, several metadata records
for one ASIN."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from mmrec.ingest.errors import DataError
from mmrec.ingest.prepare import PrepareConfig, prepare_dataset
from mmrec.synthetic.raw import FRAGMENT_TITLE

T0 = 1_400_000_000  # 2014-05-13
DAY = 86400


def _review_2018(user: str, item: str, ts: int, text: str = "ok") -> str:
    return json.dumps(
        {"overall": 5.0, "reviewerID": user, "asin": item, "unixReviewTime": ts, "reviewText": text}
    )


def _reviews(path: Path, items: list[str], users: int = 6) -> Path:
    """Every user reviews every item, one day apart: a 2-core set that keeps all of them."""
    lines = [
        _review_2018(f"U{u}", item, T0 + DAY * (u * len(items) + k))
        for u in range(users)
        for k, item in enumerate(items)
    ]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def _prepare(tmp_path: Path, reviews: Path, meta: Path | None = None, **kw) -> tuple[Path, dict]:
    cfg = PrepareConfig(
        **{
            "source": "amazon2018",
            "reviews": str(reviews),
            "meta": str(meta) if meta else None,
            "out": str(tmp_path / "out"),
            "kcore": 2,
            "report": False,
            **kw,
        }
    )
    out = prepare_dataset(cfg, progress=False)
    return out, json.loads((out / "meta.json").read_text())


def _meta_2018(asin: str, **fields) -> dict:
    return {
        "category": ["Beauty & Personal Care", "Skin Care"],
        "description": [f"Description of {asin}."],
        "title": f"Title {asin}",
        "brand": f"Brand {asin}",
        "image": [f"http://i/{asin}.jpg"],
        "price": "$5.00",
        "asin": asin,
        **fields,
    }


def _write_meta(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def test_markup_only_title_is_missing_counted_and_text_falls_back(tmp_path):
    """A 2018 title that is only a cut-off tag becomes null (counted per field), and the item
    text that `mmrec embed` reads is built from the other fields, not the same debris."""
    from mmrec.content.inputs import ItemText

    items = ["A1", "A2", "A3"]
    reviews = _reviews(tmp_path / "r_5.json.gz", items)
    meta = _write_meta(
        tmp_path / "meta.json.gz",
        [
            json.dumps(_meta_2018("A1", title=FRAGMENT_TITLE)).encode(),
            json.dumps(_meta_2018("A2", title="<div><span></span></div>", brand="&nbsp;")).encode(),
            json.dumps(_meta_2018("A3", title="Soap &amp; <b>Oud</b>")).encode(),
        ],
    )
    out, info = _prepare(tmp_path, reviews, meta)
    table = pl.read_parquet(out / "items.parquet").sort("item_id")
    assert table["title"].to_list() == [None, None, "Soap & Oud"]
    assert table["brand"].to_list() == ["Brand A1", None, "Brand A3"]
    assert info["item_fields"]["markup_only"] == {
        "title": 2,
        "description": 0,
        "categories": 0,
        "brand": 1,
    }
    texts = dict(zip(table["item_idx"].to_list(), table["item_id"].to_list(), strict=True))
    built = {texts[k + 1]: t for k, t in enumerate(ItemText().load(out))}
    assert built["A1"] == (
        "Brand: Brand A1. Categories: Beauty & Personal Care > Skin Care. Description of A1."
    )
    assert "span" not in built["A1"] and built["A1"] != built["A2"]
    assert built["A3"].startswith("Soap & Oud. Brand: Brand A3.")


def test_mixed_timestamp_units_are_decided_per_value(tmp_path, capsys):
    """10% milliseconds among seconds: every event keeps its real date (none in 1970); times
    before 1995 or after the day of the prepare are dropped under their own reason."""
    rows = []
    for k in range(200):
        seconds = T0 + k * 3600
        ts = seconds * 1000 + 123 if k % 10 == 0 else seconds
        rows.append({"user_id": f"U{k % 5}", "parent_asin": f"P{k % 7}", "timestamp": ts})
    future = int(datetime.now(timezone.utc).timestamp()) + 3 * DAY
    rows += [
        {"user_id": "U1", "parent_asin": "P1", "timestamp": 86400 * 3},  # 1970
        {"user_id": "U1", "parent_asin": "P2", "timestamp": 788_918_400_000},  # 1995-01-01 ms
        {"user_id": "U2", "parent_asin": "P1", "timestamp": future},
    ]
    path = tmp_path / "Mixed.jsonl"
    path.write_text("".join(json.dumps({"rating": 4.0, **r}) + "\n" for r in rows))
    cfg = {"source": "amazon2023", "kcore": 0, "keep_repeats": True, "max_bad_fraction": 0.02}
    out, info = _prepare(tmp_path, path, **cfg)
    ts = pl.read_parquet(out / "interactions.parquet")["timestamp"]
    assert ts.min() >= 788_918_400 and ts.max() < future
    assert sorted(ts.to_list()) == sorted([T0 + k * 3600 for k in range(200)] + [788_918_400])
    assert info["dropped"]["time_out_of_range"] == 2
    assert info["num_interactions"] + sum(info["dropped"].values()) == info["input_rows"] == 203
    printed = capsys.readouterr().out
    assert "line 201: timestamp '259200' is outside 1995-01-01 .. " in printed
    assert "line 203: timestamp" in printed
    with pytest.raises(DataError, match=r"time_out_of_range=2"):
        _prepare(tmp_path, path, **(cfg | {"max_bad_fraction": 0.0, "out": str(tmp_path / "o")}))


def _cut(path: Path, data: bytes) -> int:
    """Writes the first half of the gzip ``data`` to ``path``; returns its complete lines."""
    path.write_bytes(data[: len(data) // 2])
    return zlib.decompressobj(31).decompress(data[: len(data) // 2]).count(b"\n")


def test_truncated_gzip_stops_unless_allowed_then_keeps_its_complete_lines(tmp_path, capsys):
    """A gzip file cut in half stops prepare with one line (file, bytes read of its size, the
    last good line, what to do); with --allow_truncated its complete lines are kept, the rest
    counts as one ``truncated`` line, and meta.json says so."""
    lines = [_review_2018(f"U{k % 40}", f"I{k % 30}", T0 + k, "x" * (k % 50)) for k in range(3000)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "Cut_5.json.gz"
    readable = _cut(path, data)
    size = len(data) // 2
    assert 100 < readable < 3000
    with pytest.raises(DataError) as err:
        _prepare(tmp_path, path, kcore=0, keep_repeats=True, max_bad_fraction=1.0)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: truncated gzip file: ")
    assert f"after {size:,} of the file's {size:,} bytes" in message
    assert f"line {readable} is the last complete line" in message
    assert "download it again, or pass --allow_truncated true" in message
    assert not (tmp_path / "out" / "meta.json").exists()
    capsys.readouterr()
    out, info = _prepare(tmp_path, path, kcore=0, keep_repeats=True, allow_truncated=True)
    assert info["dropped"] == {"truncated": 1, "duplicate": 0}
    assert info["input_rows"] == readable + 1 and info["num_interactions"] == readable
    assert info["truncated_files"] == [
        {
            "file": str(path),
            "size": size,
            "bytes_read": size,
            "last_complete_line": readable,
            "lines_kept": readable,
        }
    ]
    assert info["settings"]["allow_truncated"] is True
    printed = capsys.readouterr().out
    assert f"Cut_5.json.gz: truncated gzip file, kept its first {readable} lines" in printed
    # the tail is not held against max_bad_fraction once truncation is allowed
    cfg = {"allow_truncated": True, "max_bad_fraction": 0.0, "out": str(tmp_path / "o2")}
    assert _prepare(tmp_path, path, kcore=0, keep_repeats=True, **cfg)[1]["num_interactions"] == (
        readable
    )


def test_truncated_metadata_and_table_files(tmp_path):
    reviews = _reviews(tmp_path / "r_5.json.gz", ["A1", "A2", "A3"])
    records = [json.dumps(_meta_2018(f"A{k % 3 + 1}", title="t" * (k % 90))) for k in range(900)]
    meta = tmp_path / "meta_Cut.json.gz"
    readable = _cut(meta, gzip.compress(("\n".join(records) + "\n").encode()))
    with pytest.raises(
        DataError, match=rf"meta_Cut.json.gz: truncated gzip file: .*line {readable} "
    ):
        _prepare(tmp_path, reviews, meta)
    _, info = _prepare(tmp_path, reviews, meta, allow_truncated=True)
    (entry,) = info["truncated_files"]
    assert entry["file"] == str(meta) and entry["lines_kept"] == readable
    assert info["meta_skipped"] == 1 and info["items_without_meta"] == 0

    rows = ["user,item,time"] + [f"U{k % 20},I{k % 15},{T0 + k * DAY}" for k in range(4000)]
    table = tmp_path / "events.csv.gz"
    readable = _cut(table, gzip.compress(("\n".join(rows) + "\n").encode()))
    columns = {"user_id": "user", "item_id": "item", "timestamp": "time"}
    cfg = {"source": "tabular", "columns": columns, "kcore": 0, "out": str(tmp_path / "t")}
    with pytest.raises(DataError, match=rf"line {readable} is the last complete line.*--allow"):
        _prepare(tmp_path, table, **cfg)
    _, info = _prepare(tmp_path, table, **cfg, allow_truncated=True)
    assert info["input_rows"] == readable and info["dropped"]["truncated"] == 1  # header + rows
    assert info["truncated_files"][0]["lines_kept"] == readable - 1


def test_allow_truncated_is_a_documented_option_that_keeps_old_fingerprints(capsys):
    from mmrec.ingest.prepare import main
    from mmrec.ingest.settings import settings

    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--allow_truncated {true,false}" in help_text
    assert "Keep the complete lines of a truncated gzip file (an interrupted" in help_text
    base = PrepareConfig(source="amazon2018")
    assert "allow_truncated" not in settings(base)  # folders prepared before it stay valid
    assert settings(PrepareConfig(source="amazon2018", allow_truncated=True))["allow_truncated"]


@pytest.mark.shared_data
def test_real_gift_cards_cut_in_half(shared_data, tmp_path, capsys):
    """The official Gift_Cards_5.json.gz cut at half its size: 1,484 of its 2,972 lines are
    complete, the 1,485th is cut. `mmrec prepare` stops (exit 2, one line); with
    --allow_truncated true it keeps the 1,484 and meta.json records the cut."""
    from mmrec.ingest.prepare import main

    data = (shared_data / "amazon2018-5core" / "Gift_Cards_5.json.gz").read_bytes()
    path = tmp_path / "Gift_Cards_5.json.gz"
    assert _cut(path, data) == 1484
    argv = ["--source", "amazon2018", "--reviews", str(path), "--out", str(tmp_path / "o")]
    argv += ["--report", "false", "--progress", "false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{path}: truncated gzip file: " in err and "line 1484 is the last complete" in err
    assert f"of the file's {len(data) // 2:,} bytes" in err
    assert main([*argv, "--allow_truncated", "true"]) == 0
    info = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert info["input_rows"] == 1485 and info["dropped"]["truncated"] == 1
    assert info["truncated_files"][0]["lines_kept"] == 1484


def test_invalid_utf8_in_metadata_is_counted_per_field(tmp_path):
    reviews = _reviews(tmp_path / "r_5.json.gz", ["A1", "A2", "A3"])
    good = json.dumps(_meta_2018("A3")).encode()
    meta = _write_meta(
        tmp_path / "meta.json.gz",
        [
            json.dumps(_meta_2018("A1", title="Caf@ Noir")).encode().replace(b"@", b"\xe9"),
            json.dumps(_meta_2018("A2", description=["Bad @ byte"]))
            .encode()
            .replace(b"@", b"\xff"),
            good,
        ],
    )
    out, info = _prepare(tmp_path, reviews, meta)
    table = pl.read_parquet(out / "items.parquet").sort("item_id")
    assert table["title"].to_list() == ["Caf\ufffd Noir", "Title A2", "Title A3"]
    assert table["description"][1] == "Bad \ufffd byte"
    assert info["item_fields"]["invalid_utf8"] == {
        "title": 1,
        "description": 1,
        "categories": 0,
        "brand": 0,
    }
    assert info["items_without_meta"] == 0 and info["meta_skipped"] == 0


def test_several_metadata_records_for_one_asin_keep_the_most_complete(tmp_path, capsys):
    """The stated rule: the record with the most non-empty fields wins, the first in the file
    among equals; the others are counted."""
    reviews = _reviews(tmp_path / "r_5.json.gz", ["A1", "A2"])
    sparse = {"asin": "A1", "title": "Sparse"}
    meta = _write_meta(
        tmp_path / "meta.json.gz",
        [
            json.dumps(sparse).encode(),
            json.dumps(_meta_2018("A1", title="Complete")).encode(),
            json.dumps(_meta_2018("A1", title="Complete too, later")).encode(),
            json.dumps(_meta_2018("A2", title=FRAGMENT_TITLE)).encode(),  # title empty: 5 fields
            json.dumps(_meta_2018("A2", title="Named", brand="")).encode(),  # brand empty: 5
        ],
    )
    out, info = _prepare(tmp_path, reviews, meta)
    table = pl.read_parquet(out / "items.parquet").sort("item_id")
    assert table["title"].to_list() == ["Complete", None]  # A2: a tie, the first record
    assert table["brand"].to_list() == ["Brand A1", "Brand A2"]
    assert info["meta_duplicate_records"] == 3
    assert "duplicate_records: 3 dropped" in capsys.readouterr().out
