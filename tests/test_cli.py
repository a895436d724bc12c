"""`mmrec` end to end: fit then test and predict on the quickstart config; reloads agree exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import polars as pl
import pytest

from mmrec.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _last_metrics(log_dir: Path) -> dict[str, float]:
    files = sorted(log_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    assert files, f"no metrics.csv under {log_dir}"
    out: dict[str, float] = {}
    with files[-1].open() as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "prepare", "embed", "recommend"):
        assert f"  {command} " in text
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Fit the quickstart config for 2 epochs through `mmrec fit` (data prepared into tmp)."""
    root = tmp_path_factory.mktemp("cli")
    common = [
        f"--config={QUICKSTART}",
        f"--data.data_dir={root / 'gift_cards'}",
        f"--data.prepare.out={root / 'gift_cards'}",
        f"--data.prepare.reviews={REPO / 'mmrec/data/shipped/Gift_Cards_5.json.gz'}",
        f"--data.prepare.meta={REPO / 'mmrec/data/shipped/meta_Gift_Cards.json.gz'}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root / 'runs'}",
    ]
    fit = ["fit", *common, "--trainer.max_epochs=2"]
    assert main(fit) == 0
    (run,) = [p for p in (root / "runs" / "quickstart").iterdir() if p.name != "latest"]
    return root, common, run


def test_fit_writes_checkpoints_and_validation_metrics(trained, capsys):
    root, _, run = trained
    import torch

    assert (root / "runs" / "quickstart" / "latest").resolve() == run.resolve()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert last["epoch"] == 1 and best["epoch"] in (0, 1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    metrics = _last_metrics(run / "fit")
    assert 0 < metrics["val/ndcg@10"] <= 1 and metrics["epoch"] == 1


def test_test_metrics_identical_after_reload(trained):
    root, common, run = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    test = ["test", *common, f"--ckpt_path={ckpt}"]
    assert main(test) == 0
    first = _last_metrics(run / "test")  # the test of a run writes into that run's folder
    assert main(test) == 0
    second = _last_metrics(run / "test")
    assert first["test/ndcg@10"] > 0 and first == second

    # the checkpoint alone (no config) rebuilds the model; Python evaluation gives the same numbers
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule

    model = MMRecModule.load_from_checkpoint(ckpt, weights_only=True)
    dm = AmazonDataModule(
        str(root / "gift_cards"), max_len=model.hparams.max_len, eval_batch_size=256
    )
    trainer = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=root)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    for key in ("test/ndcg@10", "test/ndcg@20"):
        assert result[key] == pytest.approx(first[key], abs=1e-6), key


def test_predict_writes_topk_parquet(trained):
    root, common, run = trained
    out = root / "pred.parquet"
    args = [
        "predict",
        *common,
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"--predict_writer.output={out}",
        "--trainer.logger=false",
    ]
    assert main(args) == 0
    frame = pl.read_parquet(out)
    assert {"user_idx", "user_id", "item_idx", "item_id", "score"} <= set(frame.columns)
    assert frame["user_idx"].n_unique() == len(frame) > 400
    assert frame["user_idx"].is_sorted()  # loaders visit short histories first; the file is sorted
    assert frame["item_idx"].list.len().unique().to_list() == [10]
    scores = frame["score"].to_list()
    assert all(s == sorted(s, reverse=True) for s in scores)
    inter = pl.read_parquet(root / "gift_cards" / "interactions.parquet")
    seen = (
        inter.group_by("user_idx")
        .agg(pl.col("item_idx"))
        .join(frame.select("user_idx", pl.col("item_idx").alias("rec")), on="user_idx")
    )
    assert all(
        not set(r) & set(s)
        for r, s in zip(seen["rec"].to_list(), seen["item_idx"].to_list(), strict=True)
    )


def test_tools_dispatch_and_missing_tool(monkeypatch, capsys):
    import mmrec.cli

    with pytest.raises(SystemExit) as info:
        main(["prepare", "--help"])
    assert info.value.code == 0 and "--source" in capsys.readouterr().out
    monkeypatch.setitem(mmrec.cli.TOOLS, "embed", ("mmrec.no_such_module", "x"))
    assert main(["embed"]) == 2
    assert "not available yet" in capsys.readouterr().err
