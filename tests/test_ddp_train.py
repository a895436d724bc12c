"""DDP on 2 CPU processes (gloo) through `mmrec`: training works, test metrics equal one process."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mmrec(args: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mmrec.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _metrics(log_dir: Path) -> dict[str, float]:
    (file,) = list(log_dir.rglob("metrics.csv"))
    out: dict[str, float] = {}
    with file.open() as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if v})
    return out


def test_ddp_two_cpu_processes_match_one(tmp_path):
    data = tmp_path / "gift_cards"
    common = [
        f"--config={QUICKSTART}",
        f"--data.data_dir={data}",
        f"--data.prepare.out={data}",
        f"--data.prepare.reviews={REPO / 'mmrec/data/shipped/Gift_Cards_5.json.gz'}",
        f"--data.prepare.meta={REPO / 'mmrec/data/shipped/meta_Gift_Cards.json.gz'}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
    ]
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    # evaluation batches of one user: every user's scores are computed by identical kernels in
    # both runs, so the comparison can be exact (batched CPU matmuls differ in the last bits)
    one_row = ["--data.eval_batch_size=1"]
    _mmrec(
        [
            "fit",
            *common,
            *ddp,
            "--trainer.max_epochs=1",
            f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
            f"--trainer.logger.save_dir={tmp_path / 'fit'}",
        ],
        tmp_path,
    )
    fit = _metrics(tmp_path / "fit")
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    # the validation NDCG@10 the DDP fit logged is the single-process value of its weights
    _mmrec(
        [
            "validate",
            *common,
            *one_row,
            "--trainer.devices=1",
            f"--ckpt_path={ckpt}",
            f"--trainer.logger.save_dir={tmp_path / 'val'}",
        ],
        tmp_path,
    )
    assert fit["epoch"] == 0
    assert fit["val/ndcg@10"] == pytest.approx(_metrics(tmp_path / "val")["val/ndcg@10"], abs=1e-6)
    _mmrec(
        [
            "test",
            *common,
            *ddp,
            *one_row,
            f"--ckpt_path={ckpt}",
            f"--trainer.logger.save_dir={tmp_path / 'ddp'}",
        ],
        tmp_path,
    )
    _mmrec(
        [
            "test",
            *common,
            *one_row,
            "--trainer.devices=1",
            f"--ckpt_path={ckpt}",
            f"--trainer.logger.save_dir={tmp_path / 'one'}",
        ],
        tmp_path,
    )
    two, one = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "one")
    keys = [k for k in one if k.startswith("test/")]
    assert keys and one["test/ndcg@10"] > 0
    for k in keys:
        assert two[k] == pytest.approx(one[k], abs=1e-6), k
    # rank 0 gathers every process's users into one per-user table, each user once
    import polars as pl

    (ddp_users,) = list((tmp_path / "ddp").rglob("test_per_user.parquet"))
    (one_users,) = list((tmp_path / "one").rglob("test_per_user.parquet"))
    assert pl.read_parquet(ddp_users).equals(pl.read_parquet(one_users))
