"""A checkpoint names a module nobody trusted: no entry point imports it (working directory or
PYTHONPATH), and every entry point answers a refused or broken checkpoint with one line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from mmrec.checkpoints import CLI_INSTANTIATOR
from mmrec.cli import main
from mmrec.config import ConfigError
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.synthetic.dataset import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("trust") / "ds", num_users=30, num_items=40, seed=3
    )


def _model(data: Path) -> MMRecModule:
    from mmrec.data.datamodule import AmazonDataModule

    dm = AmazonDataModule(str(data), max_len=6, batch_size=8, prepare=None)
    return MMRecModule.for_data(dm, d_model=8, sequence=GPT2Sequence(n_layer=1, n_head=2))


def _save(model: MMRecModule, path: Path, **hparams) -> Path:
    """A checkpoint as `mmrec fit` writes it (LightningCLI's `_instantiator` included), with
    ``hparams`` changed."""
    hp = dict(model.hparams) | {"_instantiator": CLI_INSTANTIATOR} | hparams
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hp, "epoch": 1}, path)
    return path


class Marker:
    """A module ``evil_<id>.py`` in ``folder`` that writes ``ran`` when imported and defines
    ``Encoder``, an ItemIdEncoder subclass (so only the import itself can refuse it)."""

    def __init__(self, folder: Path) -> None:
        self.name = f"evil_{uuid.uuid4().hex[:8]}"
        self.ran = folder / "ran"
        (folder / f"{self.name}.py").write_text(
            f"import pathlib\npathlib.Path({str(self.ran)!r}).write_text('imported')\n"
            "from mmrec.encoders.item_id import ItemIdEncoder\n\n\n"
            "class Encoder(ItemIdEncoder):\n    pass\n"
        )

    def spec(self) -> list[dict]:
        return [{"class_path": f"{self.name}.Encoder", "init_args": {}}]

    def assert_not_imported(self) -> None:
        assert not self.ran.exists() and self.name not in sys.modules


@pytest.fixture(params=["working directory", "PYTHONPATH"])
def marker(request, tmp_path, monkeypatch) -> Marker:
    """The marker module where Python finds it: the working directory ("" on sys.path, as for
    ``python -c`` run there) or a PYTHONPATH folder."""
    folder = tmp_path / "mods"
    folder.mkdir()
    if request.param == "working directory":
        monkeypatch.chdir(folder)
        monkeypatch.syspath_prepend("")
    else:
        monkeypatch.syspath_prepend(str(folder))
    return Marker(folder)


def _config(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "trainer": {
                    "max_epochs": 1,
                    "logger": False,
                    "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "runs"),
                },
                "data": {"data_dir": str(data), "prepare": None, "max_len": 6, "batch_size": 8},
                "model": {
                    "d_model": 8,
                    "sequence": {
                        "class_path": "mmrec.sequence.GPT2Sequence",
                        "init_args": {"n_layer": 1, "n_head": 2},
                    },
                },
            }
        )
    )
    return path


def _one_line(err: str, prog: str, *parts: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    assert "weights_only=False" not in err and "Traceback" not in err


def test_load_from_checkpoint_imports_nothing_it_was_not_told_to_trust(data, tmp_path, marker):
    path = _save(_model(data), tmp_path / "evil.ckpt", item_encoders=marker.spec())
    with pytest.raises(ConfigError) as info:
        MMRecModule.load_from_checkpoint(path)
    assert str(info.value).startswith(
        f"checkpoint {path} refused: item_encoders[0]: '{marker.name}.Encoder' lives in module "
        f"'{marker.name}', outside mmrec and not imported"
    )
    marker.assert_not_imported()
    # trusting it is the one way in, and then the model loads with its weights
    model = MMRecModule.load_from_checkpoint(path, trusted_modules=[marker.name])
    assert type(model.item_encoders[0]).__name__ == "Encoder" and marker.ran.exists()
    sys.modules.pop(marker.name, None)


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("_instantiator", "os.system", "_instantiator 'os.system' is not LightningCLI's"),
        ("_class_path", "this.Model", "'this.Model' lives in module 'this'"),
        (
            "dropout",
            {"class_path": "this.Thing", "init_args": {}},
            "dropout: 'this.Thing' lives in module 'this'",
        ),
    ],
)
def test_every_class_path_of_the_stored_config_is_checked(data, tmp_path, entry, value, message):
    path = _save(_model(data), tmp_path / "crafted.ckpt", **{entry: value})
    with pytest.raises(ConfigError, match="refused") as info:
        MMRecModule.load_from_checkpoint(path)
    assert message in str(info.value) and "this" not in sys.modules


def test_a_checkpoint_cannot_trust_a_module_itself(data, tmp_path, marker):
    spec = marker.spec()
    path = _save(
        _model(data), tmp_path / "evil.ckpt", item_encoders=spec, trusted_modules=[marker.name]
    )
    with pytest.raises(ConfigError, match=f"'{marker.name}.Encoder' lives in module"):
        MMRecModule.load_from_checkpoint(path)
    marker.assert_not_imported()


def test_a_cli_checkpoint_still_loads_with_its_weights(data, tmp_path):
    model = _model(data)
    again = MMRecModule.load_from_checkpoint(_save(model, tmp_path / "ok.ckpt"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    with pytest.raises(ConfigError, match="weights_only=True"):
        MMRecModule.load_from_checkpoint(tmp_path / "ok.ckpt", weights_only=False)


def test_recommend_refuses_with_one_line(data, tmp_path, marker, capsys):
    path = _save(_model(data), tmp_path / "evil.ckpt", item_encoders=marker.spec())
    args = ["recommend", f"--ckpt_path={path}", f"--data_dir={data}", "--user=u1"]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "mmrec recommend", f"checkpoint {path} refused")
    marker.assert_not_imported()


@pytest.mark.parametrize("command", ["test", "predict", "fit"])
def test_lightning_commands_refuse_before_importing(data, tmp_path, marker, capsys, command):
    path = _save(_model(data), tmp_path / "evil.ckpt", item_encoders=marker.spec())
    args = [command, f"--config={_config(tmp_path, data)}", f"--ckpt_path={path}"]
    assert main(args) == 2  # fit: resuming from the checkpoint
    _one_line(capsys.readouterr().err, f"mmrec {command}", f"checkpoint {path} refused")
    marker.assert_not_imported()


def test_experiment_adopt_refuses_with_one_line(data, tmp_path, marker, capsys):
    from mmrec.experiments.plan import ExperimentConfig, plan
    from mmrec.lightning_cli import resolve_config

    config = _config(tmp_path, data)
    exp = {"name": "trust", "base": [str(config)], "seeds": [0], "store": str(tmp_path / "st")}
    exp["variants"] = {"ID only": []}
    (run,) = plan(ExperimentConfig(**exp))
    folder = tmp_path / "runs" / "tiny" / "20260101-000000"
    (folder / "fit").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    # the saved config is a planned run, so adopting tests the (crafted) best checkpoint
    (folder / "fit" / "config.yaml").write_text(yaml.safe_dump(resolve_config(list(run.args))))
    model = _model(data)
    for name in ("best", "last"):
        _save(model, folder / "checkpoints" / f"{name}.ckpt", item_encoders=marker.spec())
    state = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    state["callbacks"] = {"ModelCheckpoint{}": {"best_model_score": torch.tensor(0.1)}}
    torch.save(state, folder / "checkpoints" / "best.ckpt")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    args = ["experiment", f"--config={tmp_path / 'exp.yaml'}", "--train=false", "--report=false"]
    assert main([*args, f"--adopt=[{folder}]"]) == 2
    _one_line(capsys.readouterr().err, "mmrec experiment", "refused", marker.name)
    marker.assert_not_imported()
    # a pickle payload as the best checkpoint: one line, never torch's weights_only advice
    _pickle_payload(folder / "checkpoints" / "best.ckpt", tmp_path / "pickled")
    assert main([*args, f"--adopt=[{folder}]"]) == 2
    _one_line(capsys.readouterr().err, "mmrec experiment", "holds Python objects")
    assert not (tmp_path / "pickled").exists()


def test_tune_refuses_a_checkpoint_to_resume_from(data, tmp_path, marker, capsys, monkeypatch):
    path = _save(_model(data), tmp_path / "evil.ckpt", item_encoders=marker.spec())
    study = {
        "name": "trust",
        "base": [str(_config(tmp_path, data))],
        "overrides": [f"ckpt_path={path}"],
        "space": [{"name": "model.lr", "type": "float", "low": 1e-4, "high": 1e-2}],
        "n_trials": 1,
        "startup_trials": 1,
        "root": str(tmp_path / "tune"),
        "out": str(tmp_path / "best.yaml"),
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    # Optuna's handler as it prints to this test's stderr (its own keeps an earlier capture's)
    monkeypatch.setattr(logging.getLogger("optuna"), "handlers", [logging.StreamHandler()])
    assert main(["tune", f"--config={tmp_path / 'study.yaml'}"]) == 2
    err = capsys.readouterr().err  # Optuna's own log lines besides (its handler is global)
    assert "Traceback" not in err and "failed with" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("mmrec tune")]
    assert len(lines) == 1 and lines[0].startswith(f"mmrec tune: error: checkpoint {path} refused")
    marker.assert_not_imported()


def _pickle_payload(path: Path, ran: Path) -> None:
    """A file torch.save wrote with an object whose unpickling would create ``ran``."""

    class Payload:
        def __reduce__(self):
            return (Path.touch, (ran,))

    torch.save({"state_dict": {}, "x": Payload()}, path)


def test_broken_checkpoints_are_one_line_naming_the_file(data, tmp_path, capsys):
    good = _save(_model(data), tmp_path / "good.ckpt")
    blob = good.read_bytes()
    cases = {
        "empty.ckpt": (b"", "cannot be read"),
        "half.ckpt": (blob[: len(blob) // 2], "cannot be read"),
        "text.ckpt": (b"not a checkpoint\n", "cannot be read"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    _pickle_payload(tmp_path / "payload.ckpt", tmp_path / "ran")
    cases["payload.ckpt"] = (None, "holds Python objects")
    torch.save([1, 2], tmp_path / "list.ckpt")
    cases["list.ckpt"] = (None, "is not a Lightning checkpoint")
    state = torch.load(good, weights_only=True)
    state["state_dict"].pop(next(iter(state["state_dict"])))
    torch.save(state, tmp_path / "edited.ckpt")
    cases["edited.ckpt"] = (None, "its weights do not fit the model")
    for name, (_, message) in cases.items():
        path = tmp_path / name
        args = ["recommend", f"--ckpt_path={path}", f"--data_dir={data}", "--user=u1"]
        assert main(args) == 2, name
        _one_line(capsys.readouterr().err, "mmrec recommend", f"checkpoint {path}", message)
        with pytest.raises(ConfigError, match=message):
            MMRecModule.load_from_checkpoint(path)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("init_arg", "its stored model config does not parse"),
        (
            "weights",
            "its weights do not fit the model its hyper-parameters build (1 missing, 1 unexpected",
        ),
    ],
)
def test_lightning_commands_answer_an_edited_checkpoint_in_one_line(
    data, tmp_path, capsys, edit, message
):
    model = _model(data)
    path = _save(model, tmp_path / "edited.ckpt")
    state = torch.load(path, weights_only=True)
    if edit == "init_arg":
        state["hyper_parameters"]["sequence"]["init_args"]["n_layer"] = "two"
    else:
        name = next(iter(state["state_dict"]))
        state["state_dict"][name + "_renamed"] = state["state_dict"].pop(name)
    torch.save(state, path)
    args = ["test", f"--config={_config(tmp_path, data)}", f"--ckpt_path={path}"]
    assert main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mmrec test")]
    assert len(err) == 1 and err[0].startswith(f"mmrec test: error: checkpoint {path}: {message}")


def test_embed_refuses_a_pickled_clip_checkpoint_with_one_line(data, tmp_path, capfd):
    _pickle_payload(tmp_path / "clip.pt", tmp_path / "ran")
    args = ["embed", f"--dataset={data}", f"--model={tmp_path / 'clip.pt'}", "--modalities", "text"]
    assert main(args) == 2
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mmrec embed")]
    assert lines == [
        f"mmrec embed: error: CLIP checkpoint '{tmp_path / 'clip.pt'}' refused: it holds Python "
        "objects, not only tensors, and loading those would run code from the file; use the "
        "official CLIP checkpoint (a TorchScript archive or a state_dict of tensors)"
    ]
    assert "weights_only=False" not in err and "Traceback" not in err
    assert not (tmp_path / "ran").exists()


def test_the_command_line_from_the_issue_imports_nothing(data, tmp_path):
    """`PYTHONPATH=<folder> mmrec recommend` and `python -c load_from_checkpoint` run in the
    folder holding the module, and a standard-library module that prints when imported."""
    folder = tmp_path / "mods"
    folder.mkdir()
    marker = Marker(folder)
    model = _model(data)
    evil = _save(model, tmp_path / "evil.ckpt", item_encoders=marker.spec())
    this = _save(model, tmp_path / "this.ckpt", item_encoders=[{"class_path": "this.Encoder"}])
    env = dict(os.environ, PYTHONPATH=str(folder))
    for ckpt in (evil, this):
        out = subprocess.run(
            [sys.executable, "-m", "mmrec.cli", "recommend", f"--ckpt_path={ckpt}", "--user=u1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 2 and "refused" in out.stderr, out.stderr
        assert "Beautiful is better than ugly" not in out.stdout + out.stderr
    code = f"from mmrec.module import MMRecModule; MMRecModule.load_from_checkpoint({str(evil)!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "ConfigError: checkpoint" in out.stderr
    assert not marker.ran.exists()


def test_embed_names_a_clip_file_that_is_no_checkpoint_in_one_line(data, tmp_path, capfd):
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    args = ["embed", f"--dataset={data}", f"--model={tmp_path / 'noise.pt'}"]
    assert main([*args, "--modalities", "text"]) == 2
    err = capfd.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("mmrec embed")] == [
        f"mmrec embed: error: could not load CLIP model '{tmp_path / 'noise.pt'}': not a CLIP "
        "checkpoint (a TorchScript archive or a state_dict of tensors); pass --model with the "
        "path of a CLIP checkpoint file"
    ]
    assert "Traceback" not in err and "holds Python objects" not in err
