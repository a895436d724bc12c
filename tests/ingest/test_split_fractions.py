"""Temporal starts given as fractions of the events (`--valid_start 0.8`): resolved to the UTC
day of the event at that fraction on the prepared data, recorded in meta.json, and refused
where they cannot mean anything."""

from __future__ import annotations

import json

import polars as pl
import pytest

from mmrec.ingest.errors import DataError
from mmrec.ingest.prepare import PrepareConfig, config_from_args, prepare_dataset

DAY = 86400
T0 = 18262 * DAY  # 2020-01-01
COLS = {"user_id": "u", "item_id": "i", "timestamp": "t", "rating": "r"}


def _prep(tmp_path, rows, out="o", **kw):
    path = tmp_path / "t.csv"
    path.write_text("u,i,t,r\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    cfg = PrepareConfig(
        source="tabular", reviews=str(path), columns=COLS, kcore=0, out=str(tmp_path / out),
        report=False, split="temporal", **kw,
    )  # fmt: skip
    folder = prepare_dataset(cfg, progress=False)
    meta = json.loads((folder / "meta.json").read_text())
    return pl.read_parquet(folder / "interactions.parquet"), meta


def _half_days(n=40):
    """``n`` events, one every half day from 2020-01-01, over 4 users and 13 items."""
    return [(f"u{k % 4}", f"i{k % 13}", T0 + k * DAY // 2, 5) for k in range(n)]


def test_fractions_resolve_to_the_day_of_the_event_at_that_fraction(tmp_path):
    inter, meta = _prep(tmp_path, _half_days(), valid_start=0.5, test_start="0.75")
    split = meta["split"]
    # event 20 (of 40) is on day 10 -> 2020-01-11; event 30 on day 15 -> 2020-01-16
    assert (split["valid_start"], split["test_start"]) == ("2020-01-11", "2020-01-16")
    assert (split["valid_start_fraction"], split["test_start_fraction"]) == (0.5, 0.75)
    assert (split["valid_start_ts"], split["test_start_ts"]) == (T0 + 10 * DAY, T0 + 15 * DAY)
    assert split["counts"] == {"train": 20, "valid": 10, "test": 10}
    lo = dict(inter.group_by("split").agg(pl.col("timestamp").min()).iter_rows())
    assert (lo["valid"], lo["test"]) == (T0 + 10 * DAY, T0 + 15 * DAY)
    assert meta["settings"]["valid_start"] == 0.5  # the setting as given: the fingerprint


def test_a_day_is_never_split_and_at_most_the_fraction_comes_before(tmp_path):
    # day-granular: 10 events on each of 4 days; 0.55 falls inside day 2 (events 20-29)
    rows = [(f"u{k % 5}", f"i{k}", T0 + (k // 10) * DAY, 5) for k in range(40)]
    _, meta = _prep(tmp_path, rows, valid_start=0.55, test_start=0.8)
    counts = meta["split"]["counts"]
    assert meta["split"]["valid_start"] == "2020-01-03"  # the whole of day 2 is valid
    assert counts == {"train": 20, "valid": 10, "test": 10}
    assert counts["train"] <= 0.55 * 40


def test_a_fraction_on_the_command_line_and_a_date_beside_it(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("u,i,t,r\n" + "".join(",".join(map(str, r)) + "\n" for r in _half_days()))
    argv = ["--source", "tabular", "--reviews", str(path), "--columns", json.dumps(COLS)]
    argv += ["--kcore", "0", "--out", str(tmp_path / "cli"), "--report", "false"]
    argv += ["--split", "temporal", "--valid_start", "2020-01-06", "--test_start", "0.75"]
    cfg, _ = config_from_args(argv)
    meta = json.loads((prepare_dataset(cfg, progress=False) / "meta.json").read_text())
    assert (meta["split"]["valid_start"], meta["split"]["test_start"]) == (
        "2020-01-06",
        "2020-01-16",
    )
    assert "valid_start_fraction" not in meta["split"]
    assert meta["split"]["counts"] == {"train": 10, "valid": 20, "test": 10}


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"valid_start": 1.5, "test_start": 0.9}, "a fraction of the events, within \\(0, 1\\)"),
        ({"valid_start": "0", "test_start": 0.9}, "within \\(0, 1\\)"),
        ({"valid_start": 0.9, "test_start": 0.8}, "valid_start <= test_start"),
        ({"valid_start": 0.5, "test_start": 0.8, "test_end": 0.9}, "not a fraction"),
        (
            {"valid_start": "2020-01-19", "test_start": 0.5},
            "is after --test_start 2020-01-11 .*test_start_fraction.: 0.5",
        ),
    ],
)
def test_fractions_that_cannot_mean_anything_are_refused(tmp_path, kw, message):
    with pytest.raises(DataError, match=message):
        _prep(tmp_path, _half_days(), **kw)
