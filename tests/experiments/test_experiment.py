"""`mmrec experiment` and `mmrec tune` end to end on the shipped Gift Cards data (tiny runs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import polars as pl
import pytest
import yaml

from mmrec.cli import main
from mmrec.config import ConfigError
from tests.data.test_protocols import tiny_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "mmrec" / "data" / "shipped"


def _data_overrides(tmp: Path) -> list[str]:
    return [
        f"data.data_dir={tmp / 'gift_cards'}",
        f"data.prepare.reviews={SHIPPED / 'Gift_Cards_5.json.gz'}",
        f"data.prepare.meta={SHIPPED / 'meta_Gift_Cards.json.gz'}",
        "data.prepare.report=false",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    config = {
        "name": "tiny",
        "base": [str(REPO / "configs" / "quickstart.yaml")],
        "overrides": _data_overrides(tmp),
        "seeds": [0, 1],
        "reference": "ID only",
        "variants": {
            "ID only": ["model.event_encoders=[]"],
            "ID + time": [
                "model.event_encoders=[{class_path: mmrec.encoders.time.TimestampEncoder}, "
                "{class_path: mmrec.encoders.time.QueryTimeEncoder}]"
            ],
        },
        "baselines": {"popularity": "mmrec.experiments.baselines.PopularityBaseline"},
        "published": [{"model": "Some paper", "ndcg@10": 0.1, "hr@10": 0.2,
                       "uses_target_time": False, "uses_content": False, "source": "a log"}],
        "out": str(tmp / "out"),
        "store": str(tmp / "store"),
        "root": str(tmp / "runs"),
    }  # fmt: skip
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["experiment", f"--config={path}"]) == 0
    return tmp, path


def test_experiment_stores_every_run_and_writes_the_tables(experiment):
    tmp, _ = experiment
    records = [json.loads(p.read_text()) for p in sorted((tmp / "store").glob("*.json"))]
    assert sorted((r["variant"], r["seed"]) for r in records) == [
        ("ID + time", 0), ("ID + time", 1), ("ID only", 0), ("ID only", 1), ("popularity", 0)
    ]  # fmt: skip
    for r in records:  # each record's metrics are the means of its per-user table
        users = pl.read_parquet(tmp / "store" / f"{r['key']}.users.parquet")
        assert users["ndcg@10"].mean() == pytest.approx(r["test"]["ndcg@10"], abs=1e-7)
        assert len(users) == users["user_idx"].n_unique() > 400
    by = {(r["variant"], r["seed"]): r for r in records}
    assert by["ID only", 0]["key"] != by["ID only", 1]["key"]  # the seed is part of the key
    assert by["ID only", 0]["epochs"] == 2 and by["ID only", 0]["train_seconds"] > 0
    csv = pl.read_csv(tmp / "out" / "results.csv")
    assert len(csv) == 5 and {"ndcg@10", "hr@10", "coverage@10"} <= set(csv.columns)
    md = (tmp / "out" / "results.md").read_text()
    mean = (by["ID only", 0]["test"]["ndcg@10"] + by["ID only", 1]["test"]["ndcg@10"]) / 2
    row = next(line for line in md.splitlines() if line.startswith("| ID only |"))
    assert row.split(" | ")[2].startswith(f"{mean:.4f} ± ")  # NDCG@10 is the 2nd column
    assert " | 0,1 | 2/2 | " in row  # the seeds behind the row and their epochs
    assert "| ndcg@10 | ID + time | " in md and "| hr@10 | popularity | " in md
    assert "| Some paper | 0.1 | 0.2 | no | no | a log |" in md
    assert (tmp / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    # baselines are validated as the models are: what chooses between them
    pop = by["popularity", 0]
    assert 0 < pop["val_ndcg@10"] < 1 and pop["val_ndcg@10"] != pop["test"]["ndcg@10"]
    models = {v: (by[v, 0]["val_ndcg@10"] + by[v, 1]["val_ndcg@10"]) / 2
              for v in ("ID only", "ID + time")}  # fmt: skip
    best = max(models, key=models.get)
    chosen = (
        "Chosen on validation (NDCG@10), test shown beside: best baseline: popularity "
        f"(val {pop['val_ndcg@10']:.4f}, test {pop['test']['ndcg@10']:.4f}); "
        f"best model: {best} (val {models[best]:.4f}, "
    )
    assert chosen in md


def test_a_baseline_stored_without_validation_is_evaluated_again(experiment, tmp_path):
    tmp, path = experiment
    store = tmp_path / "store"
    shutil.copytree(tmp / "store", store)
    record = next(p for p in store.glob("*.json") if '"popularity"' in p.read_text())
    old = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in old.items() if k != "val_ndcg@10"}))
    assert main(["experiment", f"--config={path}", f"--store={store}", "--train=false",
                 f"--out={tmp_path / 'out'}"]) == 0  # fmt: skip
    again = json.loads(record.read_text())
    assert again["val_ndcg@10"] == old["val_ndcg@10"] and again["test"] == old["test"]


def test_rerun_trains_nothing(experiment, monkeypatch):
    import mmrec.experiments.execute as exp

    tmp, path = experiment

    def refuse(*a, **k):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(exp, "train_and_test", refuse)
    monkeypatch.setattr(exp, "evaluate_baseline", refuse)
    before = (tmp / "out" / "results.md").read_text()
    assert main(["experiment", f"--config={path}"]) == 0
    assert (tmp / "out" / "results.md").read_text() == before
    # another experiment naming the same resolved config reuses the stored run
    assert main(["experiment", f"--config={path}", "--name=renamed", "--train=false",
                 f"--out={tmp / 'out2'}"]) == 0  # fmt: skip
    assert "Missing runs" not in (tmp / "out2" / "results.md").read_text()


def test_missing_runs_are_named_when_only_assembling(experiment, capsys):
    tmp, path = experiment
    args = ["experiment", f"--config={path}", "--seeds=[0, 1, 5]", "--train=false",
            f"--out={tmp / 'out3'}"]  # fmt: skip
    assert main(args) == 0
    assert "2 run(s) missing: ID only seed 5, ID + time seed 5" in capsys.readouterr().out


def test_tune_never_reads_the_test_split_and_its_best_config_trains(tmp_path, monkeypatch):
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule

    def no_test(*a, **k):
        raise AssertionError("the test split was read while tuning")

    monkeypatch.setattr(AmazonDataModule, "test_dataloader", no_test)
    monkeypatch.setattr(MMRecModule, "test_step", no_test)
    config = {
        "name": "tiny_tune",
        "base": [str(REPO / "configs" / "quickstart.yaml")],
        "overrides": _data_overrides(tmp_path),
        "space": [{"name": "model.lr", "type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                  {"name": "model.d_model", "type": "categorical", "choices": [16, 32]},
                  {"name": "model.event_encoders[1].init_args.dropout", "type": "categorical",
                   "choices": [0.1, 0.3]}],
        "n_trials": 3,
        "startup_trials": 2,
        "root": str(tmp_path / "runs"),
        "out": str(tmp_path / "best.yaml"),
    }  # fmt: skip
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["tune", f"--config={path}"]) == 0
    record = (tmp_path / "best.md").read_text()
    assert record.count("| COMPLETE |") + record.count("| PRUNED |") == 3
    # the epochs column: each trial validated 1 or 2 epochs (trainer.max_epochs=2)
    epochs = re.findall(r"^\| \d+ \| \w+ \| [0-9.—]+ \| (\d+) \|", record, flags=re.M)
    assert len(epochs) == 3 and set(epochs) <= {"1", "2"}, record
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["model"]["d_model"] in (16, 32) and 1e-3 <= best["model"]["lr"] <= 1e-2
    # an option of one list entry (the TimestampEncoder) is searched and kept in the best config
    assert best["model"]["event_encoders"][1]["init_args"]["dropout"] in (0.1, 0.3)
    assert best["model"]["event_encoders"][2]["init_args"]["dropout"] == 0.0
    assert "model.event_encoders[1].init_args.dropout" in record
    # a rerun resumes the study from its SQLite storage
    assert main(["tune", f"--config={path}", "--n_trials=1"]) == 0
    trials = re.findall(r"^\| (\d+) \|", (tmp_path / "best.md").read_text(), flags=re.M)
    assert trials == ["0", "1", "2", "3"]
    monkeypatch.undo()
    runs = tmp_path / "fit_runs"
    args = ["fit", f"--config={tmp_path / 'best.yaml'}", "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={runs}"]  # fmt: skip
    assert main(args) == 0
    assert (runs / "tiny_tune_best" / "latest" / "checkpoints" / "best.ckpt").is_file()


def test_workers_claim_runs_so_each_runs_once_and_seeds_go_first(tmp_path, monkeypatch):
    from mmrec.experiments import execute as ex
    from mmrec.experiments.store import ResultStore

    trained = []

    def fake_train(run, cfg, *store):
        trained.append((run.variant, run.seed))
        return {"test": {}, "val_ndcg@10": 0.0}, pl.DataFrame({"user_idx": [1]})

    monkeypatch.setattr(ex, "train_and_test", fake_train)
    monkeypatch.setattr(ex, "evaluate_baseline", fake_train)
    runs = [ex.Run(v, s, (), f"{v}-{s}") for v in ("a", "b") for s in (0, 1)]
    runs.append(ex.Run("pop", 0, (), "pop-0", baseline="x.Pop"))
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "b-0").touch()  # another worker is training b seed 0
    cfg = ex.ExperimentConfig(name="t", base=[], variants={}, claims=str(claims))
    store = ResultStore(tmp_path / "store")
    done = ex.execute(cfg, runs, store)
    # baselines first, then seed by seed; the claimed run is left to its worker
    assert trained == [("pop", 0), ("a", 0), ("a", 1), ("b", 1)]
    assert [r.key for r in done] == ["pop-0", "a-0", "a-1", "b-1"]
    assert sorted(p.name for p in claims.iterdir()) == ["a-0", "a-1", "b-0", "b-1", "pop-0"]
    # a second worker over the same claims finds nothing left to do
    assert ex.execute(cfg, runs, store) == [] and len(trained) == 4


def test_adopted_fit_is_stored_as_the_planned_run_would_be(tmp_path, capsys):
    """A run folder from `mmrec fit` with a planned run's settings (other name and root) is
    tested and stored under that run's key, with what training it here would have stored."""
    from mmrec.config import ConfigError
    from mmrec.experiments import experiment as ex

    config = {
        "name": "adopt",
        "base": [str(REPO / "configs" / "quickstart.yaml")],
        "overrides": [*_data_overrides(tmp_path), "model.event_encoders=[]"],
        "variants": {"ID only": []},
        "seeds": [0],
        "out": str(tmp_path / "out"),
        "store": str(tmp_path / "store"),
        "root": str(tmp_path / "runs"),
    }
    path = tmp_path / "adopt.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (run,) = ex.plan(ex.ExperimentConfig(**config))
    by_hand = [a for a in run.args if not a.startswith(("--name=", "--trainer.default_root_dir="))]
    for seed in (0, 1):  # seed 1 is no run of the experiment
        probe = [f"--name=probe{seed}", f"--trainer.default_root_dir={tmp_path / 'probes'}"]
        assert main(["fit", *by_hand, f"--seed_everything={seed}", f"--data.seed={seed}",
                     *probe]) == 0  # fmt: skip
    (probe0,) = (tmp_path / "probes" / "probe0").glob("2*")
    (probe1,) = (tmp_path / "probes" / "probe1").glob("2*")
    args = ["experiment", f"--config={path}", "--train=false", f"--adopt=[{probe0}, {probe1}]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"adopt: testing ID only seed 0 from {probe0}" in out
    assert f"adopt: skipped {probe1}: its config is no run of this experiment" in out
    assert "missing" not in out
    adopted = json.loads((tmp_path / "store" / f"{run.key}.json").read_text())
    assert adopted["adopted"] is True and adopted["run_folder"] == str(probe0)
    assert adopted["epochs"] == 2 and adopted["best_epoch"] in (0, 1)
    assert adopted["train_seconds"] > 0
    # adopting it again is a no-op that says why
    assert main(args) == 0
    again = capsys.readouterr().out
    assert f"skipped {probe0}: its run (ID only seed 0) is already stored" in again
    # training the same run in the experiment gives the same figures (CPU runs are deterministic)
    trained_store = tmp_path / "trained"
    assert main(["experiment", f"--config={path}", f"--store={trained_store}"]) == 0
    trained = json.loads((trained_store / f"{run.key}.json").read_text())
    assert "adopted" not in trained and trained["epochs"] == adopted["epochs"]
    assert trained["val_ndcg@10"] == pytest.approx(adopted["val_ndcg@10"], abs=1e-6)
    for metric in ("ndcg@10", "hr@10", "mrr"):
        assert trained["test"][metric] == pytest.approx(adopted["test"][metric], abs=1e-6)
    users = pl.read_parquet(tmp_path / "store" / f"{run.key}.users.parquet")
    assert users["ndcg@10"].mean() == pytest.approx(adopted["test"]["ndcg@10"], abs=1e-7)
    with pytest.raises(ConfigError, match="is not a finished `mmrec fit` run folder"):
        ex.adopt_runs(ex.ExperimentConfig(**config | {"adopt": [str(tmp_path)]}), [run],
                      ex.ResultStore(tmp_path / "empty"))  # fmt: skip


def test_options_added_later_keep_stored_keys_at_their_old_value():
    from mmrec.experiments.store import run_key

    before = {"seed_everything": 0, "data": {"data_dir": "d", "max_len": 50}, "name": "a"}
    at_old_value = json.loads(json.dumps(before))
    at_old_value["data"]["prefix_samples"] = False
    at_old_value["name"] = "b"  # volatile
    assert run_key(at_old_value) == run_key(before)
    changed = json.loads(json.dumps(at_old_value))
    changed["data"]["prefix_samples"] = True
    assert run_key(changed) != run_key(before)
    changed["data"]["max_len"] = 20  # every other option stays in the key
    assert len({run_key(changed), run_key(before)}) == 2


def test_callback_arguments_added_later_keep_stored_keys_at_their_old_value():
    """EMAWeights' `max_horizon_epochs` at its default (12) is left out of the key, so the EMA
    runs stored before it existed keep theirs; any other value, or other callbacks' arguments,
    stay in it."""
    from mmrec.experiments.store import run_key

    def config(**init_args):
        ema = {"class_path": "mmrec.runs.EMAWeights", "init_args": init_args}
        return {"seed_everything": 0, "trainer": {"callbacks": [ema]}}

    before = config(decay=0.998, update_starting_at_step=None)
    assert run_key(config(decay=0.998, update_starting_at_step=None, max_horizon_epochs=12.0)) \
        == run_key(before)  # fmt: skip
    assert run_key(config(decay=0.998, update_starting_at_step=None, max_horizon_epochs=6.0)) \
        != run_key(before)  # fmt: skip
    assert run_key(config(decay=0.998, update_starting_at_step=None, max_horizon_epochs=None)) \
        != run_key(before)  # fmt: skip
    assert run_key(config(decay=0.999, max_horizon_epochs=12.0)) != run_key(before)
    other = {
        "seed_everything": 0,
        "trainer": {
            "callbacks": [{"class_path": "my.Callback", "init_args": {"max_horizon_epochs": 12.0}}]
        },
    }
    assert run_key(other) != run_key({"seed_everything": 0, "trainer": {"callbacks": [
        {"class_path": "my.Callback", "init_args": {}}]}})  # fmt: skip


def _records(store: Path) -> dict[tuple[str, int], dict]:
    records = [json.loads(p.read_text()) for p in store.glob("*.json")]
    return {(r["variant"], r["seed"]): r for r in records}


def test_damaged_store_files_are_named_and_their_runs_trained_again(
    experiment, tmp_path, capsys, monkeypatch
):
    import mmrec.experiments.execute as exp

    tmp, path = experiment
    store = tmp_path / "store"
    shutil.copytree(tmp / "store", store)
    by = _records(store)
    record = store / f"{by['ID only', 0]['key']}.json"
    users = store / f"{by['ID + time', 1]['key']}.users.parquet"
    record.write_bytes(b"")  # a JSON truncated to 0 bytes
    users.write_bytes(users.read_bytes()[:100])  # a per-user table truncated to 100 bytes
    args = ["experiment", f"--config={path}", f"--store={store}", f"--out={tmp_path / 'out'}"]
    capsys.readouterr()
    assert main([*args, "--train=false"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    damaged = [line for line in captured.err.splitlines() if "damaged" in line]
    assert len(damaged) == 2 and str(record) in damaged[0] and str(users) in damaged[1]
    assert "2 run(s) missing: ID only seed 0, ID + time seed 1" in captured.out
    trained = []

    def retrain(run, cfg, *store):  # the fixture's own figures, without training again
        trained.append((run.variant, run.seed))
        original = tmp / "store" / f"{run.key}"
        fields = ("test", "val_ndcg@10", "best_epoch", "epochs", "train_seconds", "run_folder")
        stored = json.loads(original.with_suffix(".json").read_text())
        return {k: stored[k] for k in fields}, pl.read_parquet(f"{original}.users.parquet")

    monkeypatch.setattr(exp, "train_and_test", retrain)
    assert main(args) == 0
    assert trained == [("ID only", 0), ("ID + time", 1)]
    assert "missing" not in capsys.readouterr().out
    assert _records(store)["ID only", 0]["test"] == by["ID only", 0]["test"]


def test_each_result_records_the_code_that_made_it(experiment):
    from mmrec import __version__
    from mmrec.experiments.store import code_label

    tmp, _ = experiment
    codes = [r["code"] for r in _records(tmp / "store").values()]
    assert len(codes) == 5 and all(c == codes[0] for c in codes)
    commit = codes[0]["commit"]
    assert codes[0]["version"] == __version__ and isinstance(codes[0]["dirty"], bool)
    # a commit of this checkout (HEAD itself, or older where others committed since)
    ancestor = ["git", "-C", str(REPO), "merge-base", "--is-ancestor", commit, "HEAD"]
    assert re.fullmatch("[0-9a-f]{40}", commit) and subprocess.run(ancestor).returncode == 0
    md = (tmp / "out" / "results.md").read_text()
    assert f"Code: every result was made by {code_label(codes[0])}." in md
    assert code_label(codes[0]).startswith(f"mmrec {__version__}, commit {commit[:12]}")
    assert code_label(None) == "unknown" and code_label({"test": {}}) == "unknown"


def test_results_of_other_code_are_named_and_mixed_code_false_refuses(
    experiment, tmp_path, capsys, monkeypatch
):
    import mmrec.experiments.execute as exp
    from mmrec.experiments.store import code_label

    tmp, path = experiment
    store = tmp_path / "store"
    shutil.copytree(tmp / "store", store)
    by = _records(store)
    other = store / f"{by['ID + time', 1]['key']}.json"
    changed = by["ID + time", 1] | {
        "code": {"version": "0.0.9", "commit": "0" * 40, "dirty": False}
    }
    other.write_text(json.dumps(changed))
    old = store / f"{by['popularity', 0]['key']}.json"  # a record from before codes were stored
    old.write_text(json.dumps({k: v for k, v in by["popularity", 0].items() if k != "code"}))
    out = tmp_path / "out"
    args = ["experiment", f"--config={path}", f"--store={store}", f"--out={out}", "--train=false"]
    assert main(args) == 0
    md = (out / "results.md").read_text()
    most = code_label(by["ID only", 0]["code"])
    assert f"Results made by other code than the rest ({most}):" in md
    assert "- ID + time seed 1: mmrec 0.0.9, commit 000000000000" in md
    assert "- popularity: unknown" in md and "- ID only seed 0" not in md
    capsys.readouterr()
    assert main([*args, "--mixed_code=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ID + time seed 1 (mmrec 0.0.9, commit 000000000000)" in err[0]
    assert "popularity (unknown)" in err[0] and "--mixed_code" in err[0]

    def refuse(*a, **k):
        raise AssertionError("trained a run that would be mixed with results of other code")

    # refused before training, not after hours of it
    monkeypatch.setattr(exp, "train_and_test", refuse)
    assert main([*args[:-1], "--seeds=[0, 1, 5]", "--mixed_code=false"]) == 2
    # results of one code pass
    args = ["experiment", f"--config={path}", f"--out={out}", "--train=false", "--mixed_code=false"]
    assert main(args) == 0


def test_default_outputs_go_under_runs_not_into_the_source_tree(experiment, tmp_path, monkeypatch):
    tmp, path = experiment
    config = yaml.safe_load(path.read_text())
    del config["out"]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "--config=tiny.yaml", "--train=false"]) == 0
    assert (tmp_path / "runs" / "experiments" / "tiny" / "results.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tiny.yaml"]


def test_each_fit_and_test_is_its_own_wandb_run_grouped_by_experiment(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    wandb.finish()  # a run an earlier test may have left
    wandb.teardown()  # forget the settings of earlier tests (WANDB_MODE=disabled)
    started = []
    init = wandb.init

    def recorded_init(*args, **kwargs):
        run = init(*args, **kwargs)
        started.append((run.id, run.group, run.job_type, run.settings.mode, dict(run.config)))
        return run

    monkeypatch.setattr(wandb, "init", recorded_init)
    config = {
        "name": "wb",
        "base": [str(REPO / "configs" / "quickstart.yaml")],
        "overrides": [*_data_overrides(tmp_path), "trainer.max_epochs=1"],
        "variants": {"ID only": ["model.event_encoders=[]"]},
        "seeds": [0, 1],
        "out": str(tmp_path / "out"),
        "store": str(tmp_path / "store"),
        "root": str(tmp_path / "runs"),
    }
    path = tmp_path / "wb.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["experiment", f"--config={path}"]) == 0
        assert wandb.run is None  # each run is finished when its command ends
    finally:
        wandb.teardown()
    assert not [w for w in caught if "wandb run already in progress" in str(w.message)]
    keys = {r["seed"]: r["key"] for r in _records(tmp_path / "store").values()}
    assert len(started) == 4 and len({run_id for run_id, *_ in started}) == 4
    assert [(job, info["experiment"]["seed"]) for _, _, job, _, info in started] == [
        ("fit", 0), ("test", 0), ("fit", 1), ("test", 1)
    ]  # fmt: skip
    for _, group, _, mode, info in started:
        assert group == "wb" and mode == "offline"
        seed = info["experiment"]["seed"]
        assert info["experiment"] == {"name": "wb", "variant": "ID only", "seed": seed,
                                      "key": keys[seed]}  # fmt: skip
    folders = sorted((tmp_path / "runs").rglob("offline-run-*"))
    assert len(folders) == 4 and {f.name.rsplit("-", 1)[1] for f in folders} == {
        run_id for run_id, *_ in started
    }


def test_refit_twins_train_the_chosen_epochs_on_train_and_valid(tmp_path, capsys):
    from mmrec.experiments.execute import execute
    from mmrec.experiments.plan import ExperimentConfig, plan
    from mmrec.experiments.store import ResultStore
    from mmrec.synthetic.dataset import make_synthetic_dataset

    data = make_synthetic_dataset(
        tmp_path / "ds", num_users=60, num_items=40, split="temporal", seed=4
    )
    base = tiny_config(tmp_path / "base.yaml", data, 3)
    config = {
        "name": "refit",
        "base": [str(base)],
        "variants": {"ID only": []},
        "refit": True,
        "store": str(tmp_path / "store"),
        "root": str(tmp_path / "runs"),
        "out": str(tmp_path / "out"),
    }
    cfg = ExperimentConfig(**config)
    original, twin = plan(cfg)
    assert twin.variant == "ID only (refit)" and twin.refit_of == original.key
    assert "--data.fit_on_valid=true" in twin.args and twin.key != original.key
    store = ResultStore(cfg.store)
    assert execute(cfg, [twin], store) == []  # waits for its original
    assert "ID only (refit) seed 0 waits for its run" in capsys.readouterr().out
    path = tmp_path / "refit.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", f"--config={path}"]) == 0
    first, again = store.get(original.key), store.get(twin.key)
    assert again["refit_of"] == original.key and again["variant"] == "ID only (refit)"
    assert again["epochs"] == first["best_epoch"] + 1 == again["best_epoch"] + 1
    assert again["val_ndcg@10"] == first["val_ndcg@10"]  # what chose the epoch count
    assert again["test"]["ndcg@10"] != first["test"]["ndcg@10"]  # another model, same users
    users = pl.read_parquet(tmp_path / "store" / f"{twin.key}.users.parquet")["user_idx"]
    assert (
        users.to_list()
        == pl.read_parquet(tmp_path / "store" / f"{original.key}.users.parquet")[
            "user_idx"
        ].to_list()
    )
    md = (tmp_path / "out" / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ID only (refit) |"))
    assert row.endswith("| `base, refit on train + valid` |")
    protocol = next(line for line in md.splitlines() if line.startswith("Protocol: "))
    assert protocol.startswith("Protocol: temporal (valid from ") and protocol.endswith(
        "one-shot; rows marked (refit): trained again on train + valid."
    )


def test_rolling_origin_folds_give_a_table_per_fold_and_one_pooled(tmp_path):
    from mmrec.experiments.plan import ExperimentConfig, plan, slug
    from mmrec.experiments.store import ResultStore
    from mmrec.synthetic.dataset import make_synthetic_dataset

    folds = {}
    for name, test_start in (("2014-06", "2014-06-01"), ("2014-09", "2014-09-01")):
        data = make_synthetic_dataset(
            tmp_path / name, num_users=60, num_items=40, split="temporal", seed=4,
            valid_start="2014-03-01", test_start=test_start,
        )  # fmt: skip
        folds[name] = [f"data.data_dir={data}"]
    base = tiny_config(tmp_path / "base.yaml", None, 1)
    config = {
        "name": "rolling",
        "base": [str(base)],
        "variants": {"ID only": [], "wider": ["model.d_model=16"]},
        "baselines": {"popularity": "mmrec.experiments.baselines.PopularityBaseline"},
        "folds": folds,
        "store": str(tmp_path / "store"),
        "root": str(tmp_path / "runs"),
        "out": str(tmp_path / "out"),
    }
    runs = plan(ExperimentConfig(**config))
    assert [(r.variant, r.fold) for r in runs] == [
        (v, f) for f in folds for v in ("ID only", "wider", "popularity")
    ]
    assert len({r.key for r in runs}) == 6  # the fold's data is part of every key
    path = tmp_path / "rolling.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", f"--config={path}"]) == 0
    store = ResultStore(tmp_path / "store")
    users = {
        f: store.per_user(next(r.key for r in runs if r.fold == f and r.variant == "ID only"))
        for f in folds
    }
    for f in folds:
        md = (tmp_path / "out" / slug(f) / "results.md").read_text()
        assert md.startswith(f"# rolling, fold {f}\n")
        row = next(line for line in md.splitlines() if line.startswith("| ID only |"))
        assert row.split(" | ")[2].startswith(f"{users[f]['ndcg@10'].mean():.4f}")
    pooled = (tmp_path / "out" / "results.md").read_text()
    assert pooled.startswith("# rolling, folds pooled\n")
    assert "Protocol: rolling origin, 2 folds pooled" in pooled
    together = pl.concat([users[f]["ndcg@10"] for f in folds])
    row = next(line for line in pooled.splitlines() if line.startswith("| ID only |"))
    assert row.split(" | ")[2].startswith(f"{together.mean():.4f}")
    n = sum(len(users[f]) for f in folds)
    assert f"| ndcg@10 | wider | {n} |" in pooled  # paired over every fold's users


def test_test_overrides_test_the_stored_training_under_another_protocol(tmp_path, capsys):
    """A successive table of models trained for a one-shot one: tested from their stored best
    checkpoints (no training), the one-shot runs' validation and epochs kept; a run with no
    stored training is trained once and stored under both keys."""
    from mmrec.config import ConfigError
    from mmrec.experiments.plan import ExperimentConfig, plan
    from mmrec.experiments.store import ResultStore
    from mmrec.synthetic.dataset import make_synthetic_dataset

    data = make_synthetic_dataset(
        tmp_path / "ds", num_users=60, num_items=40, split="temporal", seed=4
    )
    base = tiny_config(tmp_path / "base.yaml", data, 2)
    common = {"base": [str(base)], "store": str(tmp_path / "store"),
              "root": str(tmp_path / "runs")}  # fmt: skip
    one_shot = common | {"name": "once", "variants": {"ID only": []},
                         "out": str(tmp_path / "once")}  # fmt: skip
    path = tmp_path / "once.yaml"
    path.write_text(yaml.safe_dump(one_shot))
    assert main(["experiment", f"--config={path}"]) == 0
    streaming = common | {
        "name": "streaming",
        "variants": {"ID only": [], "wider": ["model.d_model=16"]},
        "baselines": {"popularity": "mmrec.experiments.baselines.PopularityBaseline"},
        "test_overrides": ["data.eval_protocol=successive"],
        "out": str(tmp_path / "streaming"),
    }
    runs = plan(ExperimentConfig(**streaming))
    (trained,) = plan(ExperimentConfig(**one_shot))
    stored, pop = (next(r for r in runs if r.variant == v) for v in ("ID only", "popularity"))
    assert stored.trained_as == trained.key and stored.key != trained.key
    assert stored.test_args == ("--data.eval_protocol=successive",)
    # a baseline is evaluated as with the same setting in overrides (one key)
    same = plan(ExperimentConfig(**common | {
        "name": "x", "variants": {"ID only": []}, "overrides": ["data.eval_protocol=successive"],
        "baselines": streaming["baselines"]}))  # fmt: skip
    assert pop.key == same[-1].key
    capsys.readouterr()
    path = tmp_path / "streaming.yaml"
    path.write_text(yaml.safe_dump(streaming))
    assert main(["experiment", f"--config={path}"]) == 0
    out = capsys.readouterr().out
    assert f"ID only seed 0: testing the stored training {trained.key}" in out
    store = ResultStore(tmp_path / "store")
    first, again = store.get(trained.key), store.get(stored.key)
    assert again["trained_as"] == trained.key and again["run_folder"] == first["run_folder"]
    for k in ("val_ndcg@10", "best_epoch", "epochs", "train_seconds"):
        assert again[k] == first[k], k
    # successive: a row per test event, the one-shot table a row per user
    rows, users = store.per_user(stored.key), store.per_user(trained.key)
    assert len(rows) > len(users) and set(rows["user_idx"]) == set(users["user_idx"])
    # "wider" had no stored training: trained here once, stored under both keys
    wider = next(r for r in runs if r.variant == "wider")
    assert store.get(wider.trained_as)["run_folder"] == store.get(wider.key)["run_folder"]
    assert "trained_as" not in store.get(wider.trained_as)
    md = (tmp_path / "streaming" / "results.md").read_text()
    protocol = next(line for line in md.splitlines() if line.startswith("Protocol: "))
    assert "successive at test; the models trained and their epochs chosen as: temporal" in (
        protocol
    ) and protocol.endswith("one-shot.")
    streaming["test_overrides"] = ["configs/x.yaml"]
    with pytest.raises(ConfigError, match="is no dotted override key=value"):
        plan(ExperimentConfig(**streaming))


def test_a_test_under_overrides_has_one_key_whatever_experiment_plans_it(tmp_path):
    """The key of a run tested under ``test_overrides`` depends on what is trained and how it
    is tested, not on the experiment's or variant's name, nor on an option added later given
    at its old value: another experiment finds the stored test."""
    from mmrec.experiments.plan import ExperimentConfig, plan
    from mmrec.experiments.store import ADDED_LATER
    from mmrec.synthetic.dataset import make_synthetic_dataset

    assert ADDED_LATER["data.prefix_samples"] is False
    data = make_synthetic_dataset(
        tmp_path / "ds", num_users=40, num_items=40, split="temporal", seed=1
    )
    base = tiny_config(tmp_path / "base.yaml", data, 1)
    test = ["data.eval_protocol=successive"]

    def key(name, variant, entries, overrides=()):
        cfg = ExperimentConfig(name=name, base=[str(base)], variants={variant: entries},
                               overrides=list(overrides), test_overrides=test)  # fmt: skip
        (run,) = plan(cfg)
        return run.key, run.trained_as

    first = key("streaming", "ID only", [])
    assert key("rolling_successive", "the same model", []) == first
    assert key("other", "ID only", [], ["data.prefix_samples=false"]) == first
    wider = key("streaming", "ID only", ["model.d_model=16"])
    assert wider[0] != first[0] and wider[1] != first[1]
    assert key("streaming", "ID only", [], ["data.prefix_samples=true"])[0] != first[0]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("model: {a: b}", "Parser key \"published\"; given value: {'a': 'b'}"),
        ("model: [x]", "Parser key \"published\"; given value: ['x']"),
        ("ndcg@10: high", "published[0].ndcg@10: a number is needed, got 'high'"),
        ("uses_content: maybe", "published[0].uses_content: true or false is needed, got 'maybe'"),
        (
            "source: null",
            "published[0].source: a string is needed, got None (quote a text that holds ': ')",
        ),
    ],
)
def test_a_bad_experiment_setting_is_one_line_naming_the_key(tmp_path, capsys, entry, message):
    """A name where a mapping was parsed (an unquoted ': '), a figure that is no number or a
    flag that is no boolean is refused before anything trains, in one line naming the key."""
    row = {"model": "A: b", "ndcg@10": 0.1, "uses_target_time": False, "uses_content": False,
           "source": "x"}  # fmt: skip
    row |= yaml.safe_load("{" + entry + "}")
    config = {"name": "bad", "base": [str(REPO / "configs" / "quickstart.yaml")],
              "variants": {"ID only": []}, "published": [row],
              "store": str(tmp_path / "s")}  # fmt: skip
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    try:  # the parser's own type errors exit, the settings' checks return
        code = main(["experiment", f"--config={path}", "--train=false"])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"mmrec experiment: error: {message}"
    assert "Traceback" not in err and not (tmp_path / "s").exists()


def test_a_quoted_name_with_a_colon_stays_a_name_in_the_table(tmp_path):
    from mmrec.experiments.experiment import config_from_args
    from mmrec.experiments.plan import ExperimentConfig

    config = {"name": "ok", "base": ["configs/quickstart.yaml"], "variants": {"ID only": []},
              "variant_info": {"ID only": {"uses_target_time": False}},
              "published": [{"model": "SASRec+ (its own split: orientation only)",
                             "ndcg@10": 0.024, "uses_target_time": False,
                             "uses_content": False, "source": "a paper"}]}  # fmt: skip
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg, _ = config_from_args([f"--config={path}"])
    assert cfg.published[0]["model"] == "SASRec+ (its own split: orientation only)"
    with pytest.raises(ConfigError, match="variant_info.ID only.uses_content: only"):
        ExperimentConfig(**config | {"variant_info": {"ID only": {"uses_content": "no"}}})
    with pytest.raises(ConfigError, match=r"variants: the name 3 is not a string"):
        ExperimentConfig(**config | {"variants": {3: []}})
