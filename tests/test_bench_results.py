"""benchmarks/beauty2014.py: the results table, its run cache and the tuning record."""

from __future__ import annotations

import json

from benchmarks import beauty2014
from mmrec.data.synthetic import make_synthetic_dataset

ARGS = [
    "--variants",
    "ID only",
    "ID + rating",
    "--seeds",
    "0",
    "1",
    "--max_epochs",
    "1",
    "--batch_size",
    "64",
    "--threads",
    "1",
]


def test_table_cache_and_tuning_record(tmp_path, monkeypatch):
    make_synthetic_dataset(tmp_path / "data" / "synth", num_users=60, num_items=40, seed=0)
    common = [
        "--dataset",
        "synth",
        "--data_root",
        str(tmp_path / "data"),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out.md"),
    ]
    assert beauty2014.main(ARGS + common) == 0
    report = (tmp_path / "out.md").read_text()
    stored = sorted((tmp_path / "runs").glob("*.json"))
    rated = beauty2014.has_ratings(tmp_path / "data" / "synth")
    assert len(stored) == (4 if rated else 2)  # one file per (row, seed)
    row = next(line for line in report.splitlines() if line.startswith("| ID only |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 11 and "±" in cells[2]  # NDCG@10 as mean ± std over the 2 seeds
    assert cells[8] == "1/1" and cells[10] == "0,1"  # epochs per seed, the seeds
    if not rated:
        assert "Skipped: ID + rating: the data has no ratings" in report
    assert "published" not in report  # the published figures belong to Beauty 2014 only
    first = json.loads(stored[0].read_text())
    assert first["key"]["seed"] in (0, 1) and 0.0 <= first["result"]["ndcg@10"] <= 1.0

    # a rerun with the same settings trains nothing: every run comes from the cache
    def no_training(*a, **k):
        raise AssertionError("cached run was retrained")

    monkeypatch.setattr(beauty2014, "train_and_test", no_training)
    assert beauty2014.main(ARGS + common) == 0
    assert (tmp_path / "out.md").read_text().split("Hardware")[1].split("|")[1:] == report.split(
        "Hardware"
    )[1].split("|")[1:]
    # --only_stored reports what exists and names the seeds that do not
    more = [
        "--variants",
        "ID only",
        "--seeds",
        "0",
        "1",
        "2",
        "--max_epochs",
        "1",
        "--batch_size",
        "64",
        "--threads",
        "1",
        "--only_stored",
    ]
    assert beauty2014.main(more + common) == 0
    partial = (tmp_path / "out.md").read_text()
    assert "Skipped: ID only: seed(s) [2] not run yet" in partial
    assert next(r for r in partial.splitlines() if r.startswith("| ID only |")) == row

    # other settings train anew and the earlier runs are listed as tuning runs, with the diff
    monkeypatch.undo()
    assert (
        beauty2014.main(
            [
                "--variants",
                "ID only",
                "--seeds",
                "0",
                "--max_epochs",
                "1",
                "--batch_size",
                "64",
                "--threads",
                "1",
                "--lr",
                "0.01",
            ]
            + common
        )
        == 0
    )
    report = (tmp_path / "out.md").read_text()
    assert "## Other settings tried" in report
    tuning = [line for line in report.splitlines() if "| lr 0.003 |" in line]
    assert len(tuning) == len(stored)  # every run of the first settings, none of the new one
    assert sum(line.startswith("| ID only | ") for line in tuning) == 2
