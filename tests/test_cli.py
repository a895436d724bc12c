"""`mmrec` end to end: fit then test and predict on the quickstart config; reloads agree exactly."""

from __future__ import annotations

import csv
import re
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
    assert metrics["epoch"] == 1
    # the logged validation NDCG@10 of the last epoch is what the last checkpoint scores
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule

    model = MMRecModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    dm = AmazonDataModule(str(root / "gift_cards"), max_len=model.hparams.max_len)
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=root
    )
    again = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert again["val/ndcg@10"] == pytest.approx(metrics["val/ndcg@10"], abs=1e-6)


def test_test_metrics_identical_after_reload(trained):
    root, common, run = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    test = ["test", *common, f"--ckpt_path={ckpt}"]
    assert main(test) == 0
    first = _last_metrics(run / "test")  # the test of a run writes into that run's folder
    assert main(test) == 0
    second = _last_metrics(run / "test")
    assert first == second and "test/ndcg@20" in first
    # per-user ranks and metrics for paired tests: their means are the logged metrics
    per_user = pl.read_parquet(run / "test" / "test_per_user.parquet")
    assert per_user["user_idx"].is_sorted() and per_user["user_id"].null_count() == 0
    assert len(per_user) == per_user["user_idx"].n_unique() > 400
    for key in ("ndcg@10", "hr@20", "mrr", "map@10"):
        assert per_user[key].mean() == pytest.approx(first[f"test/{key}"], abs=1e-7), key
    assert ((per_user["first_rank"] <= 10) == (per_user["hr@10"] == 1.0)).all()

    # the checkpoint alone (no config) rebuilds the model; Python evaluation gives the same numbers
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule

    model = MMRecModule.load_from_checkpoint(ckpt, weights_only=True)
    dm = AmazonDataModule(
        str(root / "gift_cards"), max_len=model.hparams.max_len, eval_batch_size=256
    )
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=root
    )
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


def _common(root: Path, runs: Path) -> list[str]:
    return [
        f"--config={QUICKSTART}",
        f"--data.data_dir={root / 'gift_cards'}",
        f"--data.prepare.out={root / 'gift_cards'}",
        f"--data.prepare.reviews={REPO / 'mmrec/data/shipped/Gift_Cards_5.json.gz'}",
        f"--data.prepare.meta={REPO / 'mmrec/data/shipped/meta_Gift_Cards.json.gz'}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={runs}",
    ]


def test_two_fits_in_a_row_get_their_own_run_folders(trained, capfd):
    root, _, _ = trained
    common = _common(root, root / "runs2")
    assert main(["fit", *common, "--trainer.max_epochs=1"]) == 0
    assert main(["fit", *common, "--trainer.max_epochs=1", "--model.lr=0.01"]) == 0
    out = capfd.readouterr().out
    runs = sorted(p for p in (root / "runs2" / "quickstart").iterdir() if p.name != "latest")
    assert len(runs) == 2 and all((r / "checkpoints" / "best.ckpt").is_file() for r in runs)
    assert (root / "runs2" / "quickstart" / "latest").resolve() == runs[1].resolve()
    # each fit ends by saying its best validation NDCG@10, the epoch and the checkpoint
    best = runs[1] / "checkpoints" / "best.ckpt"
    assert "best val/ndcg@10 " in out and f"at epoch 0: {best}" in out
    assert "epoch 0: train/loss_epoch " in out and ", val/ndcg@10 " in out  # every epoch
    # `--ckpt_path best` tests the model just trained, and writes into its run folder
    assert main(["test", *common, "--ckpt_path=best"]) == 0
    out = capfd.readouterr().out
    assert f"wrote {runs[1] / 'test' / 'test_slices.csv'}" in out
    assert (runs[1] / "test" / "metrics.csv").is_file() and not (runs[0] / "test").exists()


def test_evaluation_options_apply_to_a_checkpoint_others_are_refused(trained, capfd):
    root, common, run = trained
    import shutil

    ckpt = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    shutil.rmtree(run / "test", ignore_errors=True)
    args = ["test", *common, ckpt, "--model.ks=[5]", "--model.test_slices=false"]
    assert main(args) == 0
    metrics = _last_metrics(run / "test")
    assert "test/ndcg@5" in metrics and "test/ndcg@10" not in metrics
    assert not (run / "test" / "test_slices.csv").exists()
    # a list slot named as none agrees with the checkpoint's empty one (`model.dynamics=null`
    # in an experiment's overrides reaches the test command too)
    dyn = (
        f"--config={REPO / 'configs/beauty2014/dyn_gpt2.yaml'}"  # a config with dynamics, then none
    )
    assert main(["test", *common, dyn, ckpt, "--model.dynamics=null"]) == 0
    capfd.readouterr()
    assert main(["test", *common, ckpt, "--model.d_model=64"]) == 2
    err = capfd.readouterr().err.strip()
    assert err == (
        "mmrec test: error: --model.d_model 64 differs from the checkpoint's 32; with "
        "--ckpt_path the model is the checkpoint's: drop --model.d_model (only the evaluation "
        "options ks, test_slices, predict_k, exclude_history may change)"
    )


def test_wrong_or_missing_checkpoint_is_one_clear_line(trained, tmp_path, capfd):
    from mmrec.synthetic.dataset import make_synthetic_dataset

    root, common, run = trained
    other = make_synthetic_dataset(tmp_path / "other", num_users=30, num_items=40, seed=1)
    args = [
        "test",
        f"--config={QUICKSTART}",
        f"--data.data_dir={other}",
        "--data.prepare.source=null",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
    ]
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        f"mmrec test: error: wrong checkpoint? it was trained on 147 items, the data in "
        f"{other} has 40: pass the checkpoint of this dataset, or the dataset of this "
        "checkpoint (--data.data_dir)"
    ]
    assert main(["test", *common, f"--ckpt_path={tmp_path / 'nope.ckpt'}"]) == 2
    assert capfd.readouterr().err.strip() == (
        f"mmrec test: error: --ckpt_path {tmp_path / 'nope.ckpt'}: no such checkpoint file"
    )
    assert main(["test", *_common(root, tmp_path / "empty"), "--ckpt_path=best"]) == 2
    assert "no finished fit named 'quickstart'" in capfd.readouterr().err


def test_crafted_checkpoint_is_refused_by_the_cli(trained, tmp_path, capfd):
    import torch

    root, common, run = trained
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "ran"
    ckpt["hyper_parameters"]["item_encoders"] = [
        {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    ]
    torch.save(ckpt, tmp_path / "crafted.ckpt")
    assert main(["test", *common, f"--ckpt_path={tmp_path / 'crafted.ckpt'}"]) == 2
    err = capfd.readouterr().err
    refused = f"checkpoint {tmp_path / 'crafted.ckpt'} refused: item_encoders[0]: 'os.system'"
    assert f"{refused} is not an ItemEncoder" in err
    assert not marker.exists()


def test_argument_error_is_short_with_a_did_you_mean(capfd):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as info:
        main(["fit", f"--config={QUICKSTART}", "--trainer.max_epochz=3"])
    assert info.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) <= 4, err
    assert err[0].startswith("mmrec") and "error:" in err[0] and "--trainer.max_epochz" in err[0]
    assert "--trainer.max_epochz: did you mean --trainer.max_epochs" in err[1]


def test_no_warnings_a_user_cannot_act_on(trained, tmp_path, capfd, monkeypatch):
    root, _, _ = trained
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *_common(root, tmp_path / "runs"), "--trainer.max_epochs=1"]) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    for noise in (
        "Tip:",
        "anonymous setting",
        "git root",
        "LeafSpec",
        "LightningCLI's args parameter",
    ):
        assert noise not in text, noise
    assert "best val/ndcg@10" in text


def test_resume_from_last_checkpoint_is_exact(trained, tmp_path):
    """An interrupted fit resumed from its epoch-boundary checkpoint ends bit for bit where the
    uninterrupted fit ends (RNG states of torch, numpy and python saved and restored)."""
    import torch

    root, _, _ = trained
    whole = _common(root, tmp_path / "whole")
    assert main(["fit", *whole, "--trainer.max_epochs=4"]) == 0
    parts = _common(root, tmp_path / "parts")
    assert main(["fit", *parts, "--trainer.max_epochs=2"]) == 0  # "killed" after epoch 2
    assert main(["fit", *parts, "--trainer.max_epochs=4", "--ckpt_path=last"]) == 0
    a = torch.load(tmp_path / "whole/quickstart/latest/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "parts/quickstart/latest/checkpoints/last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert len(list((tmp_path / "parts" / "quickstart").iterdir())) == 2  # one run + latest
    fa = _last_metrics(tmp_path / "whole/quickstart/latest/fit")
    fb = _last_metrics(tmp_path / "parts/quickstart/latest/fit")
    assert fa["val/ndcg@10"] == fb["val/ndcg@10"]


@pytest.mark.parametrize(
    "command, typo, meant",
    [("prepare", "--sorce", "--source"), ("recommend", "--ckpt_pth", "--ckpt_path")],
)
def test_tools_have_short_argument_errors(command, typo, meant, capfd):
    with pytest.raises(SystemExit) as info:
        main([command, typo, "x"])
    assert info.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        f"mmrec {command}: error: unrecognized arguments: {typo} x",
        f"  {typo}: did you mean {meant}?",
        f"  see `mmrec {command} --help` for every option",
    ]


def test_ema_weights_are_validated_saved_and_tested(trained, tmp_path):
    """`--trainer.callbacks+=mmrec.runs.EMAWeights`: the checkpoint's state_dict holds the
    averaged weights (the raw ones beside them for resuming), and `test` scores those."""
    import torch

    root, _, _ = trained
    common = _common(root, tmp_path)
    ema = ["--trainer.callbacks+=mmrec.runs.EMAWeights", "--trainer.callbacks.decay=0.9"]
    assert main(["fit", *common, *ema, "--trainer.max_epochs=2"]) == 0
    run = tmp_path / "quickstart" / "latest"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, raw = last["state_dict"], last["current_model_state"]
    assert averaged.keys() == raw.keys()
    key = next(k for k in averaged if k.endswith("embedding.weight"))
    assert not torch.equal(averaged[key], raw[key])  # an average, not the last step's weights
    # validation scored the averaged weights: the last logged val NDCG@10 is theirs
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule

    model = MMRecModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(model.state_dict()[key], averaged[key])
    dm = AmazonDataModule(str(root / "gift_cards"), max_len=model.hparams.max_len)
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path
    )
    again = trainer.validate(model, datamodule=dm, verbose=False)[0]
    logged = _last_metrics(run.resolve() / "fit")
    assert again["val/ndcg@10"] == pytest.approx(logged["val/ndcg@10"], abs=1e-6)
    # and `mmrec test` of that checkpoint reports the same model's test metrics
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["test", *common, f"--ckpt_path={ckpt}"]) == 0
    tested = _last_metrics(run.resolve() / "test")
    direct = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert tested["test/ndcg@10"] == pytest.approx(direct["test/ndcg@10"], abs=1e-6)


def test_ema_decay_is_capped_to_a_horizon_in_epochs():
    """EMAWeights.capped_decay: a per-step decay whose horizon would span more than
    `max_horizon_epochs` epochs is lowered to one that spans exactly that many; Beauty's 88
    steps per epoch leave 0.998 and 0.999 as they are at the default cap (12 epochs)."""
    from mmrec.callbacks import EMAWeights

    cap = EMAWeights.capped_decay
    assert cap(0.998, 88, 12.0) == 0.998 and cap(0.999, 88, 12.0) == 0.999
    assert cap(0.998, 1, 12.0) == pytest.approx(1 - 1 / 12)
    assert cap(0.998, 2, 12.0) == pytest.approx(1 - 1 / 24)
    assert cap(0.999, 60, 12.0) == pytest.approx(1 - 1 / 720)
    assert cap(0.998, 1, None) == 0.998  # no cap
    assert cap(0.998, 0, 12.0) == 0.998 and cap(0.998, float("inf"), 12.0) == 0.998  # unknown
    assert cap(0.9, 1, 0.5) == 0.0  # a horizon under one step: the average is the weights
    assert EMAWeights().max_horizon_epochs == 12.0
    with pytest.raises(ValueError, match=r"max_horizon_epochs must be positive"):
        EMAWeights(max_horizon_epochs=0)
    with pytest.raises(ValueError, match=r"decay must be within \[0, 1\), got 1.0"):
        EMAWeights(decay=1.0)


def test_ema_cap_applies_in_a_fit_and_says_so(trained, tmp_path, caplog):
    """On the quickstart's few steps per epoch, a cap of a hundredth of an epoch makes the average
    follow the weights exactly (decay 0) and prints why; without a cap the same decay leaves
    the average behind the weights."""
    import torch

    root, _, _ = trained
    states = {}
    for name, cap in (("capped", "0.01"), ("uncapped", "null")):
        common = _common(root, tmp_path / name)
        ema = [
            "--trainer.callbacks+=mmrec.runs.EMAWeights",
            "--trainer.callbacks.decay=0.998",
            f"--trainer.callbacks.max_horizon_epochs={cap}",
        ]
        caplog.clear()
        with caplog.at_level("INFO"):
            assert main(["fit", *common, *ema, "--trainer.max_epochs=2"]) == 0
        said = re.findall(
            r"EMAWeights: (\d+) optimizer step\(s\) per epoch.*capped at 0\.01 "
            r"epochs: decay (\S+)",
            caplog.text,
        )
        last = torch.load(
            tmp_path / name / "quickstart" / "latest" / "checkpoints" / "last.ckpt",
            weights_only=True,
        )
        if name == "capped":
            assert said and float(said[0][1]) == 0.0, caplog.text
            assert 2 * int(said[0][0]) == last["global_step"]  # the steps of one epoch, counted
        else:
            assert not said
        states[name] = last["state_dict"], last["current_model_state"]
    averaged, raw = states["capped"]
    assert all(torch.equal(averaged[k], raw[k]) for k in raw)
    averaged, raw = states["uncapped"]
    key = next(k for k in averaged if k.endswith("embedding.weight"))
    assert not torch.equal(averaged[key], raw[key])


def test_decay_on_plateau_lowers_the_rate_keeps_its_floor_and_resumes(trained, tmp_path):
    """`--trainer.callbacks+=mmrec.runs.DecayOnPlateau`: with an impossible `min_delta` every
    validation after the first is a plateau, so the rate is halved at each one down to the
    floor, also under a warm-up scheduler (which would otherwise reset it); a resumed fit
    goes on from the saved state."""
    import torch

    root, _, _ = trained
    common = [*_common(root, tmp_path), "--model.warmup_steps=2"]
    plateau = [
        "--trainer.callbacks+=mmrec.runs.DecayOnPlateau",
        "--trainer.callbacks.patience=1",
        "--trainer.callbacks.factor=0.5",
        "--trainer.callbacks.min_ratio=0.2",
        "--trainer.callbacks.min_delta=1.0",
    ]
    assert main(["fit", *common, *plateau, "--trainer.max_epochs=3"]) == 0
    last = tmp_path / "quickstart" / "latest" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    lr = state["hyper_parameters"]["lr"]
    (saved,) = [v for k, v in state["callbacks"].items() if k.startswith("DecayOnPlateau")]
    assert saved["scale"] == pytest.approx(0.25) and saved["wait"] == 0  # epochs 1 and 2
    rates = [g["lr"] for g in state["optimizer_states"][0]["param_groups"]]
    assert rates == pytest.approx([0.25 * lr] * len(rates))
    # resumed for one more epoch: one more plateau, and the floor (0.2) stops the halving
    assert main(["fit", *common, *plateau, "--trainer.max_epochs=4", f"--ckpt_path={last}"]) == 0
    newest = max((tmp_path / "quickstart").glob("*/checkpoints/last.ckpt"),
                 key=lambda p: p.stat().st_mtime)  # fmt: skip
    state = torch.load(newest, weights_only=True)
    assert state["epoch"] == 3
    rates = [g["lr"] for g in state["optimizer_states"][0]["param_groups"]]
    assert rates == pytest.approx([0.2 * lr] * len(rates))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"factor": 1.0}, "factor must be within (0, 1)"),
        ({"patience": 0}, "patience must be at least 1"),
        ({"mode": "up"}, "mode must be 'max' or 'min'"),
        ({"min_ratio": 0.0}, "min_ratio must be within (0, 1]"),
    ],
)
def test_decay_on_plateau_rejects_bad_settings(kwargs, message):
    from mmrec.callbacks import DecayOnPlateau

    with pytest.raises(ValueError, match=re.escape(message)):
        DecayOnPlateau(**kwargs)


@pytest.mark.parametrize(
    "mode, values",
    [
        ("max", [0.1, 0.2, 0.15, 0.15, 0.3, 0.25, 0.25]),
        ("min", [0.9, 0.8, 0.85, 0.85, 0.7, 0.75, 0.75]),
    ],
)
def test_decay_on_plateau_resets_on_improvement_in_either_mode(mode, values):
    """An improvement resets the count (validations 1 and 4 improve), so with patience 2 the
    rate drops only after validations 3 and 6; `min` mode treats a lower value as better."""
    from types import SimpleNamespace

    import torch

    from mmrec.callbacks import DecayOnPlateau

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainer = SimpleNamespace(sanity_checking=False, optimizers=[optimizer],
                              lr_scheduler_configs=[], progress_bar_callback=None,
                              callback_metrics={})  # fmt: skip
    callback = DecayOnPlateau(mode=mode, factor=0.5, patience=2)
    rates = []
    for value in values:
        trainer.callback_metrics = {"val/ndcg@10": torch.tensor(value)}
        callback.on_validation_end(trainer, None)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_step_metrics_logged_every_epoch_without_the_interval_warning(trained, tmp_path, recwarn):
    """The quickstart's 8 steps per epoch are fewer than the default log_every_n_steps (50):
    the interval is capped at an epoch, so train/loss_step is logged at each epoch's last step
    (not once in 50 steps), and Lightning's warning that asks for exactly that is not shown."""
    root, _, _ = trained
    runs = tmp_path / "runs"
    assert main(["fit", *_common(root, runs), "--trainer.max_epochs=3"]) == 0
    shown = [str(w.message) for w in recwarn if "logging interval" in str(w.message)]
    assert not shown, shown
    (run,) = [p for p in (runs / "quickstart").iterdir() if p.name != "latest"]
    with (run / "fit" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    epoch_ends = sorted({int(r["step"]) for r in rows if r.get("train/loss_epoch")})
    assert len(epoch_ends) == 3 and steps == epoch_ends, (steps, epoch_ends)
    assert all(float(r["train/loss_step"]) > 0 for r in rows if r.get("train/loss_step"))
