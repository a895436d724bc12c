"""`mmrec tune` search spaces: options of one list entry and a choice among config files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mmrec.config import ConfigError
from mmrec.experiments.tune import TuneConfig, _args, lookup, suggest
from mmrec.lightning_cli import resolve_config

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def _cfg(**kw) -> TuneConfig:
    return TuneConfig(name="t", base=[QUICKSTART], space=[], **kw)


def test_an_option_of_one_list_entry_reaches_only_that_entry():
    before = resolve_config(_args(_cfg(), {}, "x"))
    values = {"model.event_encoders[1].init_args.dropout": 0.35, "model.lr": 0.002}
    after = resolve_config(_args(_cfg(overrides=["trainer.max_epochs=3"]), values, "x"))
    assert lookup(after, "model.event_encoders[1].init_args.dropout") == 0.35
    assert after["model"]["lr"] == 0.002 and after["trainer"]["max_epochs"] == 3
    # the other entries, and the changed entry's other options, are as resolved before
    for i in (0, 2):
        assert after["model"]["event_encoders"][i] == before["model"]["event_encoders"][i]
    changed = dict(after["model"]["event_encoders"][1]["init_args"], dropout=0.0)
    assert changed == before["model"]["event_encoders"][1]["init_args"]
    assert before["model"]["event_encoders"][1]["init_args"]["dropout"] == 0.0


def test_a_config_file_choice_comes_after_base_and_before_overrides(tmp_path):
    variant = tmp_path / "with_attributes.yaml"
    variant.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "lr": 0.005,
                    "item_encoders": [
                        {"class_path": "mmrec.encoders.item_id.ItemIdEncoder"},
                        {"class_path": "mmrec.encoders.attributes.AttributeEncoder"},
                    ],
                }
            }
        )
    )
    cfg = _cfg(overrides=["model.lr=0.001"])
    values = {"config": str(variant), "model.item_encoders[1].init_args.dropout": 0.2}
    resolved = resolve_config(_args(cfg, values, "x"))
    encoders = resolved["model"]["item_encoders"]
    assert [e["class_path"] for e in encoders] == [
        "mmrec.encoders.item_id.ItemIdEncoder",
        "mmrec.encoders.attributes.AttributeEncoder",
    ]
    assert encoders[1]["init_args"]["dropout"] == 0.2
    assert resolved["model"]["lr"] == 0.001  # the override wins over the chosen file


@pytest.mark.parametrize(
    "name, message",
    [
        ("model.event_encoders[3].init_args.dropout", "has 3 entries (indices 0-2)"),
        ("model.event_encoders[1].init_args.dropuot", "has no option 'dropuot'; it has:"),
        ("model.event_encoders[1", "name one list entry as <list option>[<index>].<option>"),
        ("model.lr[0].x", "model.lr is not a list"),
        ("model.nothing[0].x", "no option model.nothing"),
    ],
)
def test_bad_indexed_options_are_refused_with_what_to_write(name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _args(_cfg(), {name: 0.1}, "x")


def test_config_must_be_a_categorical_choice():
    import optuna

    trial = optuna.trial.FixedTrial({"config": "a.yaml"})
    with pytest.raises(ConfigError, match="give type: categorical"):
        suggest(trial, [{"name": "config", "type": "float", "low": 0, "high": 1}])
    space = [{"name": "config", "type": "categorical", "choices": ["a.yaml", "b.yaml"]}]
    assert suggest(trial, space) == {"config": "a.yaml"}


def test_tune_writes_under_runs_and_each_trial_is_its_own_wandb_run(tmp_path, monkeypatch):
    """The best config and record go to the study's folder under ``root`` (not configs/tuned/);
    each trial's fit starts its own W&B run, grouped by study, its trial in the config."""
    from types import SimpleNamespace

    import torch
    import wandb

    import mmrec.lightning_cli
    from mmrec.experiments.tune import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "runs" / "wandb_home"))
    wandb.finish()  # a run an earlier test may have left
    wandb.teardown()  # forget the settings of earlier tests (WANDB_MODE=disabled)
    seen = []

    def fit(argv, callbacks=()):  # what a fit's W&B logger does, without training
        from mmrec.callbacks import WandbRun

        (info,) = [c for c in callbacks if isinstance(c, WandbRun)]
        seen.append((wandb.run, info.group, info.config))
        wandb.init(project="mmrec", dir=str(tmp_path / "runs"), group=info.group,
                   config=info.config)  # fmt: skip
        score = SimpleNamespace(best_model_score=torch.tensor(0.1 * len(seen)))
        folder = tmp_path / "runs" / f"t{len(seen)}"
        trainer = SimpleNamespace(checkpoint_callback=score)
        return SimpleNamespace(trainer=trainer, run=SimpleNamespace(folder=folder))

    monkeypatch.setattr(mmrec.lightning_cli, "run_lightning", fit)
    space = [{"name": "model.lr", "type": "float", "low": 1e-3, "high": 1e-2}]
    config = {"name": "study", "base": [QUICKSTART], "n_trials": 2, "startup_trials": 1}
    config["space"] = space
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["--config=tune.yaml"]) == 0
        assert wandb.run is None
    finally:
        wandb.teardown()
    assert (tmp_path / "runs" / "study" / "best.yaml").is_file()
    assert (tmp_path / "runs" / "study" / "best.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tune.yaml"]
    assert [run for run, _, _ in seen] == [None, None]  # no W&B run left from the trial before
    assert [group for _, group, _ in seen] == ["study", "study"]
    assert [info["tune"]["trial"] for _, _, info in seen] == [0, 1]
    assert seen[0][2]["tune"]["study"] == "study" and "model.lr" in seen[0][2]["tune"]["params"]
