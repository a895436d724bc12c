"""What a checkpoint may do when a command loads it: read as tensors and plain values only,
every class path it names checked against its slot before anything is imported, command-line
model options checked against it, and its sizes against the data ("wrong checkpoint?")."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from mmrec.config import ConfigError

#: Model options that only change evaluation: given with --ckpt_path, they apply to the
#: checkpoint's model; every other model option comes from the checkpoint.
EVAL_OPTIONS = ("ks", "test_slices", "predict_k", "exclude_history")
#: Model options the CLI links from the data; checked against the checkpoint, not copied.
LINKED = ("num_items", "num_users", "data_dir", "time_granularity", "max_len")


#: The only instantiator a checkpoint may name (what LightningCLI stores); mmrec never calls it.
CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def names_python_objects(err: pickle.UnpicklingError) -> bool:
    """Whether torch's ``weights_only`` load refused a file because it names Python objects
    (a pickle payload), rather than because it is no pickle at all (random bytes)."""
    return "GLOBAL" in str(err) or "global" in str(err)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint file as a dict of tensors and plain values (``weights_only``), on the CPU.

    Raises:
        ConfigError: One line naming the file: missing, not a checkpoint, truncated, or
            holding Python objects (a pickle payload), never torch's own advice.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path}: no such file; pass a .ckpt written by `mmrec fit`")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format
    except pickle.UnpicklingError as err:
        if not names_python_objects(err):  # garbage, not an object
            raise ConfigError(
                f"checkpoint {path} cannot be read (not a pickle of tensors): not a torch "
                "checkpoint? pass a .ckpt written by `mmrec fit`"
            ) from None
        raise ConfigError(
            f"checkpoint {path} refused: it holds Python objects, not only tensors and plain "
            "values, and loading those would run code from the file; use a checkpoint written "
            "by `mmrec fit` (or Lightning's save_checkpoint) from a source you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else type(err).__name__
        raise ConfigError(
            f"checkpoint {path} cannot be read ({reason}): a truncated copy or not a torch "
            "checkpoint? copy it again or pass a .ckpt written by `mmrec fit`"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(
            f"checkpoint {path} is not a Lightning checkpoint (no state_dict); pass a .ckpt "
            "written by `mmrec fit`"
        )
    return ckpt


def checked_hparams(ckpt: dict, path: str | Path, trusted: list[str], *, model: type) -> dict:
    """The hyper-parameters of a checkpoint read by :func:`read_checkpoint`, every class path
    they name checked against its slot before anything imports it.

    Lightning's ``_instantiator`` (LightningCLI's, the only one accepted) and ``_class_path``
    (``model``, or a subclass already imported) are checked, then dropped: mmrec builds the
    model itself, so jsonargparse never imports what a checkpoint names.

    Args:
        ckpt: The checkpoint, as :func:`read_checkpoint` returns it.
        path: Its file, for messages.
        trusted: Packages outside mmrec its components may be imported from.
        model: The model class a ``_class_path`` must name (``MMRecModule``; passed in, so
            this module never imports the model that loads checkpoints through it).

    Raises:
        ConfigError: One line naming the file and the refused entry.
    """
    hparams = ckpt.get("hyper_parameters")
    if hparams is None:
        return {}
    if not isinstance(hparams, dict):
        raise ConfigError(f"checkpoint {path} refused: its hyper_parameters are not a mapping")
    hparams = dict(hparams)
    hparams.pop("trusted_modules", None)  # trust comes from the caller, never from the file
    instantiator = hparams.pop("_instantiator", None)
    if instantiator is not None and instantiator != CLI_INSTANTIATOR:
        raise ConfigError(
            f"checkpoint {path} refused: _instantiator {instantiator!r} is not LightningCLI's "
            f"{CLI_INSTANTIATOR!r} (importing it would run code)"
        )
    class_path = hparams.pop("_class_path", None)
    if class_path is not None:
        try:
            from mmrec.config import resolve_class

            resolve_class(class_path, model, "_class_path")
        except (ImportError, TypeError) as err:
            raise ConfigError(f"checkpoint {path} refused: {err}") from None
    check_components(hparams, trusted, path)
    return hparams


def check_components(hparams: dict, trusted: list[str], path: str | Path = "") -> None:
    """Refuse a checkpoint's component specs before jsonargparse imports anything they name.

    The component slots are checked against their bases; a class path anywhere else in the
    hyper-parameters must name a :class:`~mmrec.config.Configurable` component.
    """
    from mmrec.config import Configurable, check_spec, is_spec
    from mmrec.encoders.base import EventEncoder, ItemEncoder
    from mmrec.encoders.dynamics import ItemDynamics
    from mmrec.fusion import Fusion
    from mmrec.losses import Loss
    from mmrec.sequence_base import SequenceHead

    lists = {"item_encoders": ItemEncoder, "event_encoders": EventEncoder, "dynamics": ItemDynamics}
    bases = {"fusion": Fusion, "sequence": SequenceHead, "loss": Loss}

    def others(value: Any, where: str) -> None:
        if is_spec(value):
            check_spec(value, Configurable, where, trusted)
        elif isinstance(value, dict):
            for k, v in value.items():
                others(v, f"{where}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                others(v, f"{where}[{i}]")

    try:
        for slot, value in hparams.items():
            if slot in lists and value is not None:
                if not isinstance(value, (list, tuple)):
                    raise TypeError(f"{slot}: a list of components, got {type(value).__name__}")
                for i, spec in enumerate(value):
                    check_spec(spec, lists[slot], f"{slot}[{i}]", trusted)
            elif slot in bases and value is not None:
                check_spec(value, bases[slot], slot, trusted)
            else:
                others(value, slot)
    except (ImportError, TypeError) as err:
        where = f"checkpoint {path}" if str(path) else "checkpoint"
        raise ConfigError(f"{where} refused: {err}") from None


def check_weights(model: Any, state: dict, path: str | Path) -> None:
    """The checkpoint's weights must fit the model its hyper-parameters build: the same names
    and shapes, before torch reports a mismatch as a long traceback.

    Raises:
        ConfigError: One line naming the file, with the counts of missing, unexpected and
            differently shaped weights and one example.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        k
        for k in own
        if k in state
        and (not hasattr(state[k], "shape") or tuple(state[k].shape) != tuple(own[k].shape))
    ]
    if missing or unexpected or shapes:
        example = (missing or unexpected or shapes)[0]
        raise ConfigError(
            f"checkpoint {path}: its weights do not fit the model its hyper-parameters build "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another "
            f"shape or type, e.g. {example!r}); a damaged or edited checkpoint? pass one "
            "written by `mmrec fit`"
        )


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
        if given is None and saved == []:  # a list slot given as none: the model's empty list
            continue
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
