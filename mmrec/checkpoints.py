"""What a checkpoint may do when a command loads it: its components checked against their
slots before anything is imported, command-line model options checked against it, and its
sizes against the data ("wrong checkpoint?")."""

from __future__ import annotations

from typing import Any

from mmrec.config import ConfigError

#: Model options that only change evaluation: given with --ckpt_path, they apply to the
#: checkpoint's model; every other model option comes from the checkpoint.
EVAL_OPTIONS = ("ks", "test_slices", "predict_k", "exclude_history")
#: Model options the CLI links from the data; checked against the checkpoint, not copied.
LINKED = ("num_items", "num_users", "data_dir", "time_granularity", "max_len")


def check_components(hparams: dict, trusted: list[str]) -> None:
    """Refuse a checkpoint's component specs before jsonargparse imports anything they name."""
    from mmrec.config import check_spec
    from mmrec.encoders.base import EventEncoder, ItemEncoder
    from mmrec.fusion import Fusion
    from mmrec.losses import Loss
    from mmrec.sequence import SequenceHead

    bases = {"fusion": Fusion, "sequence": SequenceHead, "loss": Loss}
    try:
        for i, spec in enumerate(hparams.get("item_encoders") or []):
            check_spec(spec, ItemEncoder, f"item_encoders[{i}]", trusted)
        for i, spec in enumerate(hparams.get("event_encoders") or []):
            check_spec(spec, EventEncoder, f"event_encoders[{i}]", trusted)
        for slot, base in bases.items():
            if hparams.get(slot) is not None:
                check_spec(hparams[slot], base, slot, trusted)
    except (ImportError, TypeError) as err:
        raise ConfigError(f"checkpoint refused: {err}") from None


def given_model_options(argv: list[str]) -> set[str]:
    """Model constructor arguments named on the command line (``--model.d_model 64``)."""
    names = set()
    for arg in argv:
        if arg.startswith("--model."):
            names.add(arg[len("--model.") :].split("=", 1)[0].split(".", 1)[0])
    return names


def _plain(value: Any) -> Any:
    """A parsed option as plain data (Namespaces to dicts, tuples to lists) for comparison."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_command_line(model_cfg: Any, hparams: dict, argv: list[str]) -> None:
    """An architecture option given on the command line must agree with the checkpoint."""
    for name in sorted(given_model_options(argv) - set(EVAL_OPTIONS)):
        if name in LINKED:
            raise ConfigError(
                f"--model.{name} cannot be set with --ckpt_path: it comes from the data "
                f"(set --data.{name})"
            )
        if name not in hparams:
            continue
        given, saved = _plain(model_cfg.get(name)), _plain(hparams[name])
        if given != saved:
            raise ConfigError(
                f"--model.{name} {given!r} differs from the checkpoint's {saved!r}; with "
                f"--ckpt_path the model is the checkpoint's: drop --model.{name} (only the "
                f"evaluation options {', '.join(EVAL_OPTIONS)} may change)"
            )


def check_data(hparams: dict, dm: Any, config: Any) -> None:
    """The project's own "wrong checkpoint?" check, before torch reports a size mismatch."""
    for name, now in (("num_items", dm.num_items), ("num_users", dm.num_users)):
        saved = hparams.get(name)
        if saved is not None and int(saved) != int(now):
            raise ConfigError(
                f"wrong checkpoint? it was trained on {saved} {name[4:]}, the data in "
                f"{dm.data_dir} has {now}: pass the checkpoint of this dataset, or the "
                "dataset of this checkpoint (--data.data_dir)"
            )
    saved_len = hparams.get("max_len")
    if saved_len is not None and int(saved_len) != int(dm.max_len):
        raise ConfigError(
            f"the checkpoint was trained with max_len {saved_len}, --data.max_len is "
            f"{dm.max_len}: set --data.max_len {saved_len}"
        )
