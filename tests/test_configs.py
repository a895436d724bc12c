"""Every YAML in configs/ parses and builds, through the command written on its first line."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from mmrec.encoders.base import BuildContext
from mmrec.synthetic.dataset import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
_NOT_TRAINING = (CONFIGS / "data", CONFIGS / "experiments")
TRAIN_CONFIGS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if not any(d in p.parents for d in _NOT_TRAINING)
)
EXPERIMENT_CONFIGS = sorted((CONFIGS / "experiments").glob("*.yaml"))
DATA_CONFIGS = sorted((CONFIGS / "data").glob("*.yaml"))


def _command(path: Path) -> list[str]:
    """The ``mmrec`` command of the config's first line that names this file."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# mmrec "), f"{path} must begin with the command that runs it"
    rel = str(path.relative_to(REPO))
    for part in first[1:].split("&&"):
        args = shlex.split(part)
        if args[:1] == ["mmrec"] and rel in args:
            return args[1:]
    raise AssertionError(f"the first line of {rel} does not run it: {first}")


def _config_files(args: list[str]) -> list[Path]:
    return [REPO / args[i + 1] for i, a in enumerate(args) if a == "--config"]


def _merged_model(files: list[Path]) -> dict:
    model: dict = {}
    for f in files:
        model.update((yaml.safe_load(f.read_text()) or {}).get("model") or {})
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("cfg") / "ds", num_users=40, num_items=40, seed=0
    )


def test_configs_found():
    names = {str(p.relative_to(CONFIGS)) for p in TRAIN_CONFIGS}
    assert {"quickstart.yaml", "beauty2014/sasrec_v1.yaml", "beauty2014/mm_gpt2.yaml"} <= names
    assert any(n.startswith("ablations/") for n in names)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_training_config_parses_and_builds(path, dataset, tmp_path, monkeypatch):
    from mmrec.lightning_cli import _cli_class
    from mmrec.module import MMRecModule

    args = _command(path)
    assert args[0] in ("fit", "validate", "test", "predict")
    files = _config_files(args)
    model_cfg = _merged_model(files)
    d_model = int(model_cfg.get("d_model", 64))
    # files that encoders read (features, users.parquet) come from their `example` hooks
    import json

    meta = json.loads((dataset / "meta.json").read_text())
    ctx = BuildContext(meta["num_items"], meta["num_users"], d_model, str(dataset), "day")
    for spec in (model_cfg.get("item_encoders") or []) + (model_cfg.get("event_encoders") or []):
        module, _, name = spec["class_path"].rpartition(".")
        getattr(importlib.import_module(module), name).example(dataset, ctx)

    monkeypatch.chdir(tmp_path)
    cli_cls, model_cls, data_cls, defaults = _cli_class()
    overrides = [f"--config={f}" for f in files] + [
        f"--data.data_dir={dataset}",
        "--data.prepare.source=null",
        "--trainer.logger=false",
    ]
    cli = cli_cls(
        model_cls,
        data_cls,
        args=overrides,
        run=False,
        trainer_defaults=defaults,
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )
    model = cli.model
    assert isinstance(model, MMRecModule)
    want = [s["class_path"].rsplit(".", 1)[1] for s in model_cfg.get("item_encoders") or []]
    assert [type(e).__name__ for e in model.item_encoders] == (want or ["ItemIdEncoder"])
    assert model.hparams.d_model == d_model and model.hparams.num_items == meta["num_items"]
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        assert model.eval()(batch).shape == (batch["item_ids"].shape[0], d_model)


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.name)
def test_data_config_parses(path, capsys):
    from mmrec.ingest.prepare import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["source"] in ("amazon2014", "amazon2018", "amazon2023", "tabular")


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_experiment_and_tune_configs_parse_and_resolve(path, monkeypatch):
    """Each experiment/search YAML parses through its command, and every run it names
    resolves to a complete training config (variants x seeds; the search's base config)."""
    first = path.read_text().splitlines()[0]
    rel = str(path.relative_to(REPO))
    assert first in (f"# mmrec experiment --config {rel}", f"# mmrec tune --config {rel}"), first
    monkeypatch.chdir(REPO)
    if first.startswith("# mmrec experiment "):
        from mmrec.experiments.experiment import config_from_args
        from mmrec.experiments.plan import plan

        cfg, _ = config_from_args(["--config", str(path)])
        runs = plan(cfg)
        trained = [r for r in runs if r.baseline is None]
        copies = max(1, len(cfg.folds)) * (2 if cfg.refit else 1)  # per fold; refit twins
        assert len(trained) == len(cfg.variants) * len(cfg.seeds) * copies
        assert len({r.key for r in trained}) == len(trained)  # every run is its own result
        assert (cfg.reference or next(iter(cfg.variants))) in cfg.variants
    else:
        import optuna

        from mmrec.experiments.tune import TuneConfig, _args, build_parser, lookup, suggest
        from mmrec.lightning_cli import resolve_config

        args = build_parser().parse_args(["--config", str(path)])
        cfg = TuneConfig(**{k: args[k] for k in TuneConfig.__dataclass_fields__})
        trial = optuna.trial.FixedTrial(
            {v["name"]: (v["choices"][0] if "choices" in v else v["low"]) for v in cfg.space}
        )
        values = suggest(trial, cfg.space)
        resolved = resolve_config(_args(cfg, values, "check"))
        for key, value in values.items():  # each searched option reaches the config
            if key != "config":
                got = lookup(resolved, key)
                if isinstance(got, dict) and "class_path" in got:  # a component by class path
                    got = got["class_path"]
                assert got == value, key


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.name)
def test_data_config_names_every_setting(path):
    """Naming a data config (``--data.prepare configs/data/X.yaml``) must replace the settings
    of a base config, not merge with them: so each file sets every setting."""
    import dataclasses

    from mmrec.ingest.settings import PrepareConfig

    written = set(yaml.safe_load(path.read_text()))
    needed = {f.name for f in dataclasses.fields(PrepareConfig)}
    assert needed - written <= {"out", "overwrite", "report", "download_dir"}


def test_beauty_config_on_another_category_keeps_no_beauty_settings():
    from mmrec.lightning_cli import resolve_config

    args = [
        f"--config={CONFIGS / 'beauty2014' / 'sasrec.yaml'}",
        f"--data.prepare={CONFIGS / 'data' / 'gift_cards2018.yaml'}",
    ]
    prepare = resolve_config(args)["data"]["prepare"]
    assert prepare["source"] == "amazon2018" and prepare["category"] == "Gift_Cards"
    assert prepare["columns"] is None and prepare["item_attributes"] is None
    assert prepare["item_text"] is None and prepare["kcore"] == 5
