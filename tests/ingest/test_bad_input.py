"""One test per kind of bad input: a clear error naming file and line/column, or a counted skip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mmrec.ingest.errors import DataError
from mmrec.ingest.prepare import PrepareConfig, main, prepare_dataset

T0 = 1_300_000_000  # 2011-03-13: Amazon review times before 1995 or in the future are dropped


def _review(user: str, item: str, ts: int, rating=5.0) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": item,
            "unixReviewTime": ts,
            "overall": rating,
            "reviewText": "ok",
        }
    )


def _good_lines(n_users: int = 40) -> list[str]:
    """``n_users`` users x 3 items, 120 valid 2018-style review lines."""
    return [
        _review(f"U{u}", f"I{(u + j) % 7}", T0 + 86400 * (u + j + 1))
        for u in range(n_users)
        for j in range(3)
    ]


def _write(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _cfg(tmp_path: Path, reviews, **kw) -> PrepareConfig:
    return PrepareConfig(
        **{
            "source": "amazon2018",
            "reviews": str(reviews),
            "out": str(tmp_path / "out"),
            "kcore": 0,
            "report": False,
            **kw,
        }
    )


def test_malformed_json_line_is_counted_and_reported(tmp_path, capsys):
    lines = _good_lines()
    lines.insert(4, '{"reviewerID": "U9", "asin": ')  # line 5
    path = _write(tmp_path / "r_5.json.gz", lines)
    out = prepare_dataset(_cfg(tmp_path, path, max_bad_fraction=0.05), progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dropped"]["malformed"] == 1
    assert meta["input_rows"] == 121 and meta["num_interactions"] == 120
    printed = capsys.readouterr().out
    assert "r_5.json.gz" in printed and "line 5: malformed JSON" in printed


def test_malformed_json_over_threshold_is_an_error(tmp_path):
    lines = _good_lines()
    lines[2] = "not json at all"
    lines[9] = "{broken"
    path = _write(tmp_path / "r_5.json", lines)
    with pytest.raises(
        DataError, match=r"r_5.json: 2 of 120 lines bad \(malformed=2\); line 3: malformed JSON"
    ):
        prepare_dataset(_cfg(tmp_path, path), progress=False)  # 1.7% > 1%


def test_missing_required_field(tmp_path):
    lines = _good_lines()
    lines[6] = json.dumps({"reviewerID": "U1", "overall": 5.0, "unixReviewTime": T0})  # no asin
    path = _write(tmp_path / "r.json", lines)
    out = prepare_dataset(_cfg(tmp_path, path, max_bad_fraction=0.02), progress=False)
    assert json.loads((out / "meta.json").read_text())["dropped"]["missing_field"] == 1
    with pytest.raises(DataError, match=r"line 7: missing required field\(s\) item_id"):
        prepare_dataset(
            _cfg(tmp_path, path, out=str(tmp_path / "o2"), max_bad_fraction=0.005), progress=False
        )


def test_truncated_gzip(tmp_path):
    path = tmp_path / "r_5.json.gz"
    data = gzip.compress(("\n".join(_good_lines()) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"r_5.json.gz: truncated gzip file.*download it again"):
        prepare_dataset(_cfg(tmp_path, path), progress=False)


def test_non_numeric_rating(tmp_path, capsys):
    lines = _good_lines()
    lines[0] = _review("U0", "I0", T0, rating="five")
    path = _write(tmp_path / "r.json", lines)
    with pytest.raises(DataError, match=r"line 1: rating 'five' is not a number"):
        prepare_dataset(_cfg(tmp_path, path, max_bad_fraction=0.0), progress=False)
    out = prepare_dataset(_cfg(tmp_path, path, max_bad_fraction=0.5), progress=False)
    assert json.loads((out / "meta.json").read_text())["dropped"] == {
        "bad_rating": 1,
        "duplicate": 0,
        "repeat": 0,
    }
    assert "bad_rating=1" in capsys.readouterr().out


def test_unreadable_timestamp_is_counted_under_its_reason(tmp_path, capsys):
    lines = _good_lines()
    lines[3] = _review("U1", "I1", "last tuesday")
    path = _write(tmp_path / "r.json", lines)
    with pytest.raises(DataError, match=r"line 4: timestamp 'last tuesday' is neither a number"):
        prepare_dataset(_cfg(tmp_path, path, max_bad_fraction=0.0), progress=False)
    out = prepare_dataset(_cfg(tmp_path, path, max_bad_fraction=0.5), progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dropped"]["bad_timestamp"] == 1
    assert meta["num_interactions"] + sum(meta["dropped"].values()) == meta["input_rows"] == 120
    assert "bad_timestamp=1" in capsys.readouterr().out


def test_kept_plus_dropped_is_checked_by_code_not_assert(tmp_path, monkeypatch):
    """The invariant survives `python -O`: a row lost without a reason is an error."""
    import mmrec.ingest.prepare as prepare

    path = _write(tmp_path / "r.json", _good_lines())
    real = prepare._meta_info

    def lose_a_row(*args, **kwargs):
        info = real(*args, **kwargs)
        info["input_rows"] += 1  # as if a reader had dropped a row without counting it
        return info

    monkeypatch.setattr(prepare, "_meta_info", lose_a_row)
    with pytest.raises(RuntimeError, match=r"120 kept \+ 0 dropped != 121 input rows"):
        prepare_dataset(_cfg(tmp_path, path), progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()  # never written for such a folder


def test_non_numeric_rating_in_csv(tmp_path):
    rows = (
        ["u,i,t,r"] + [f"U{k % 9},I{k % 5},{86400 * k},4" for k in range(60)] + ["U1,I2,86400,abc"]
    )
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t", "rating": "r"}
    with pytest.raises(
        DataError, match=r"t.csv: 1 of 61 lines bad \(bad_rating=1\); line 62: rating 'abc'"
    ):
        prepare_dataset(
            PrepareConfig(
                source="tabular",
                reviews=str(path),
                columns=cols,
                kcore=0,
                report=False,
                out=str(tmp_path / "o"),
            ),
            progress=False,
        )


@pytest.mark.parametrize("name", ["empty.json", "empty.json.gz", "empty.csv"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")
    source = "tabular" if name.endswith(".csv") else "amazon2018"
    with pytest.raises(DataError, match=rf"{name}: the file is empty"):
        prepare_dataset(_cfg(tmp_path, path, source=source), progress=False)


def test_wrong_column_mapping(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("user\titem\tts\nA\tB\t86400\n")
    cfg = PrepareConfig(
        source="tabular",
        reviews=str(path),
        out=str(tmp_path / "o"),
        kcore=0,
        columns={"user_id": "user", "item_id": "asin", "timestamp": "ts"},
    )
    with pytest.raises(
        DataError,
        match=r"t.tsv: column\(s\) item_id='asin' of the column mapping not found; "
        r"the file's columns are \['user', 'item', 'ts'\]",
    ):
        prepare_dataset(cfg, progress=False)
    cfg.columns = {"user": "user"}
    with pytest.raises(DataError, match=r"--columns names unknown field\(s\) \['user'\]"):
        prepare_dataset(cfg, progress=False)


def test_bad_metadata_lines_are_counted(tmp_path):
    reviews = _write(tmp_path / "r.json", _good_lines())
    meta_lines = [json.dumps({"asin": f"I{k}", "title": f"T{k}"}) for k in range(7)] * 20
    meta_lines[3] = "{'asin': 'I3', 'title': __import__('os').getcwd()}"  # never evaluated
    meta = _write(tmp_path / "meta.json", meta_lines)
    out = prepare_dataset(_cfg(tmp_path, reviews, meta=str(meta)), progress=False)
    assert json.loads((out / "meta.json").read_text())["meta_skipped"] == 1


def test_cli_prints_one_paragraph_and_exits_2(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text("")
    code = main(
        [
            "--source",
            "amazon2018",
            "--reviews",
            str(path),
            "--out",
            str(tmp_path / "o"),
            "--progress",
            "false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mmrec prepare: error: ") and "r.json: the file is empty" in err
    assert "Traceback" not in err


#: Lines that Python's json or polars cannot decode although they look like JSON: nesting
#: deeper than either parser goes (1,500 and 100,000 levels), numbers polars rejects.
DEEP = {
    "array_1500": "[" * 1500 + "]" * 1500,
    "object_100000": '{"a": ' * 100_000 + "1" + "}" * 100_000,
    "value_100000": '{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1300000000, '
    '"overall": 5.0, "style": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "nan": '{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1300000000, "overall": NaN}',
    "huge_number": '{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1e400}',
}


def _good_lines_of(source: str) -> list[str]:
    """``_good_lines()`` with the review keys of ``source``."""
    if source != "amazon2023":
        return _good_lines()
    lines = "\n".join(_good_lines())
    renamed = {"reviewerID": "user_id", "asin": "parent_asin", "unixReviewTime": "timestamp"}
    for old, new in (renamed | {"overall": "rating"}).items():
        lines = lines.replace(f'"{old}"', f'"{new}"')
    return lines.split("\n")


@pytest.mark.parametrize("source", ["amazon2014", "amazon2018", "amazon2023"])
def test_deeply_nested_json_lines_are_malformed_lines(tmp_path, source, capsys):
    lines = _good_lines_of(source)
    for k, line in enumerate(DEEP.values()):
        lines.insert(3 + 10 * k, line)  # lines 4, 14, 24, 34, 44
    name = "All_Beauty.jsonl" if source == "amazon2023" else "r_5.json.gz"
    path = _write(tmp_path / name, lines)
    cfg = _cfg(tmp_path, path, source=source, max_bad_fraction=0.05)
    out = prepare_dataset(cfg, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dropped"]["malformed"] == 5
    assert meta["input_rows"] == 125 and meta["num_interactions"] == 120
    printed = capsys.readouterr().out
    assert "line 4: malformed JSON" in printed and "line 44: malformed JSON" in printed


@pytest.mark.parametrize("release", ["amazon2014", "amazon2018", "amazon2023"])
def test_deeply_nested_metadata_lines_are_malformed_lines(tmp_path, release):
    key = "parent_asin" if release == "amazon2023" else "asin"
    items = [f"I{k}" for k in range(7)]
    meta_lines = [json.dumps({key: item, "title": f"T{item}"}) for item in items] * 20
    meta_lines[3:3] = [
        "[" * 1500 + "]" * 1500,
        '{"a": ' * 100_000 + "1" + "}" * 100_000,
        # a kept item whose title nests deeper than the conversion goes (700 levels)
        f'{{"{key}": "I2", "title": ' + "[" * 700 + '"x"' + "]" * 700 + "}",
        f"{{'{key}': 'I3', 'title': " + "[" * 100_000 + "]" * 100_000 + "}",  # 2014 literal
    ]
    reviews = _write(tmp_path / "r.jsonl", _good_lines_of(release))
    meta = _write(tmp_path / "meta.json.gz", meta_lines)
    cfg = _cfg(tmp_path, reviews, source=release, meta=str(meta), max_bad_fraction=0.05)
    out = prepare_dataset(cfg, progress=False)
    info = json.loads((out / "meta.json").read_text())
    assert info["meta_skipped"] == 4 and info["items_without_meta"] == 0
