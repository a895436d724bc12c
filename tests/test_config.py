"""mmrec.config: components rebuilt from specs; a checkpoint can name model components only."""

from __future__ import annotations

import sys

import pytest
import torch

from mmrec.config import ConfigError, bool_flags, component_spec, instantiate
from mmrec.encoders.base import ItemEncoder
from mmrec.encoders.item_id import ItemIdEncoder
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence


def _checkpoint(tmp_path, **components) -> str:
    """A checkpoint of a tiny real model whose hyper-parameters are then edited."""
    model = MMRecModule(
        num_items=12, num_users=5, max_len=6, d_model=8, sequence=GPT2Sequence(n_layer=1, n_head=2)
    )
    hparams = dict(model.hparams)
    hparams.update(components)
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": "2.6.6",
        },
        path,
    )
    return str(path)


def test_spec_round_trip_rebuilds_the_component():
    enc = ItemIdEncoder(dropout=0.3, init_std=0.05)
    spec = component_spec(enc)
    assert spec == {
        "class_path": "mmrec.encoders.item_id.ItemIdEncoder",
        "init_args": {"dropout": 0.3, "init_std": 0.05},
    }
    again = instantiate(spec, ItemEncoder, "item_encoders[0]")
    assert type(again) is ItemIdEncoder and component_spec(again) == spec


@pytest.mark.parametrize(
    "class_path", ["os.system", "builtins.eval", "subprocess.Popen", "mmrec.ingest.prepare.main"]
)
def test_crafted_checkpoint_runs_nothing(tmp_path, class_path):
    marker = tmp_path / "ran"
    evil = {"class_path": class_path, "init_args": {"command": f"touch {marker}"}}
    path = _checkpoint(tmp_path, item_encoders=[evil])
    with pytest.raises(ConfigError) as info:
        MMRecModule.load_from_checkpoint(path, weights_only=True)
    assert str(info.value).startswith(
        f"checkpoint {path} refused: item_encoders[0]: '{class_path}' is not an ItemEncoder"
    )
    assert "refused before calling anything" in str(info.value)
    assert not marker.exists()


def test_every_slot_checks_its_own_base(tmp_path):
    item = {"class_path": "mmrec.encoders.item_id.ItemIdEncoder", "init_args": {}}
    with pytest.raises(
        ConfigError, match=r"refused: sequence: 'mmrec.encoders.item_id.ItemIdEncoder' is not a Seq"
    ):
        MMRecModule.load_from_checkpoint(_checkpoint(tmp_path, sequence=item), weights_only=True)
    with pytest.raises(ConfigError, match=r"refused: loss: .* is not a Loss"):
        MMRecModule.load_from_checkpoint(_checkpoint(tmp_path, loss=item), weights_only=True)
    with pytest.raises(ConfigError, match=r"refused: fusion: .* is not a Fusion"):
        MMRecModule.load_from_checkpoint(_checkpoint(tmp_path, fusion=item), weights_only=True)
    with pytest.raises(ConfigError, match=r"refused: event_encoders\[0\]: .* is not an EventEnc"):
        MMRecModule.load_from_checkpoint(
            _checkpoint(tmp_path, event_encoders=[item]), weights_only=True
        )


def test_nested_spec_must_be_a_component(tmp_path):
    marker = tmp_path / "ran"
    spec = {
        "class_path": "mmrec.encoders.item_id.ItemIdEncoder",
        "init_args": {
            "dropout": {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
        },
    }
    with pytest.raises(
        TypeError, match=r"item_encoders\[0\]\.dropout: 'os.system' is not a Configurable"
    ):
        instantiate(spec, ItemEncoder, "item_encoders[0]")
    assert not marker.exists()


def test_module_outside_mmrec_imported_only_when_trusted(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "lab_encoders.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('yes')\n"
        "from mmrec.encoders.item_id import ItemIdEncoder\n"
        "class LabEncoder(ItemIdEncoder):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lab_encoders", raising=False)
    spec = {"class_path": "lab_encoders.LabEncoder", "init_args": {}}
    path = _checkpoint(tmp_path, item_encoders=[spec])
    with pytest.raises(ConfigError) as info:
        MMRecModule.load_from_checkpoint(path, weights_only=True)
    assert "item_encoders[0]: 'lab_encoders.LabEncoder' lives in module 'lab_encoders'" in str(
        info.value
    )
    assert "trusted_modules=['lab_encoders']" in str(info.value)
    assert not marker.exists()  # importing it would have run its code
    model = MMRecModule.load_from_checkpoint(
        path, weights_only=True, trusted_modules=["lab_encoders"]
    )
    assert type(model.item_encoders[0]).__name__ == "LabEncoder" and marker.exists()
    assert "trusted_modules" not in model.hparams  # the permission is not stored
    # once the user's own code has imported the module, its components load without the option
    assert (
        type(MMRecModule.load_from_checkpoint(path, weights_only=True).item_encoders[0]).__name__
        == "LabEncoder"
    )


def test_bool_flags():
    assert bool_flags(["--json", "--k", "3", "--force"], ["json", "force"]) == [
        "--json",
        "true",
        "--k",
        "3",
        "--force",
        "true",
    ]
    assert bool_flags(["--json", "false"], ["json"]) == ["--json", "false"]
