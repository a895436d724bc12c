"""Components as configuration: recorded constructor arguments, specs, and safe instantiation."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting, a checkpoint or an input that does not fit; the message says what to change.

    The ``mmrec`` command prints it as one line (no traceback) and exits with status 2.
    """


class Configurable:
    """Mixin that records the arguments a component was constructed with.

    Every subclass's ``__init__`` is wrapped so that the outermost call stores its bound
    arguments (defaults applied); ``component_spec(obj)`` turns them into a
    ``{"class_path", "init_args"}`` dict. ``MMRecModule`` stores these specs as
    hyper-parameters, so a checkpoint alone rebuilds the model with its components, whether
    the model was built by the CLI or in Python.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_args", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def wrapped(self, *args: Any, **kw: Any) -> None:
            if "_init_args" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = dict(bound.arguments)
                recorded.pop(next(iter(signature.parameters)))  # self
                for name, param in signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD and name in recorded:
                        recorded.update(recorded.pop(name))
                    elif param.kind is inspect.Parameter.VAR_POSITIONAL and name in recorded:
                        if recorded.pop(name):
                            raise TypeError(
                                f"{cls.__name__}: *args cannot be recorded; use keywords"
                            )
                object.__setattr__(self, "_init_args", recorded)
            init(self, *args, **kw)

        wrapped._records_args = True  # type: ignore[attr-defined]
        cls.__init__ = wrapped  # type: ignore[misc]


def _spec_value(value: Any, where: str) -> Any:
    if isinstance(value, Configurable):
        return component_spec(value)
    if isinstance(value, (list, tuple)):
        return [_spec_value(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _spec_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be stored in a checkpoint's hyper-parameters; "
        "pass plain values (numbers, strings, lists) or Configurable components"
    )


def component_spec(obj: Configurable) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` of a constructed component (YAML-ready)."""
    cls = type(obj)
    args = obj.__dict__.get("_init_args", {})
    path = f"{cls.__module__}.{cls.__qualname__}"
    return {
        "class_path": path,
        "init_args": {k: _spec_value(v, f"{path}.{k}") for k, v in args.items()},
    }


def is_spec(value: Any) -> bool:
    """Whether ``value`` is a ``{"class_path": ..., "init_args": ...}`` dict."""
    return isinstance(value, dict) and "class_path" in value


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _trusted(module_name: str, trusted: Sequence[str]) -> bool:
    if module_name == "mmrec" or module_name.startswith("mmrec."):
        return True
    if module_name in sys.modules:  # imported by the user's own code or config already
        return True
    return any(module_name == t or module_name.startswith(t + ".") for t in trusted)


def resolve_class(class_path: str, base: type, slot: str, trusted: Sequence[str] = ()) -> type:
    """The class named by ``class_path``, checked to be a subclass of ``base``; calls nothing.

    A module outside ``mmrec`` that is not imported yet is imported only when ``trusted``
    names it (or a parent package): importing a module runs its code, and a checkpoint file
    may come from anyone.

    Raises:
        ImportError: The class cannot be found, or its module is not trusted.
        TypeError: The name is not a subclass of ``base``.
    """
    if not isinstance(class_path, str) or "." not in class_path:
        raise TypeError(f"{slot}: class_path must be 'module.Class', got {class_path!r}")
    module_name, _, name = class_path.rpartition(".")
    if not _trusted(module_name, trusted):
        raise ImportError(
            f"{slot}: {class_path!r} lives in module {module_name!r}, outside mmrec and not "
            "imported; importing it would run its code. If you trust where this checkpoint "
            f"came from, allow it: trusted_modules=['{module_name.split('.')[0]}'] "
            "(CLI: --trust_module NAME), or import the module yourself first."
        )
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"{slot}: cannot import {class_path!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(
            f"{slot}: {class_path!r} is not {_a(base.__name__)} subclass; only model components "
            f"may be named here (refused before calling anything)"
        )
    return cls


def check_spec(spec: Any, base: type, slot: str, trusted: Sequence[str] = ()) -> None:
    """Raise as :func:`instantiate` would for ``spec``, but build nothing."""
    if not isinstance(spec, base):
        if not is_spec(spec):
            instantiate(spec, base, slot, trusted)  # raises the type error
        _plan(spec, base, slot, trusted)


def instantiate(spec: Any, base: type[T], slot: str, trusted: Sequence[str] = ()) -> T:
    """Build the component of slot ``slot`` from a spec, or check an instance given as is.

    ``spec`` is an instance of ``base`` (returned unchanged) or a
    ``{"class_path", "init_args"}`` dict. The class must be a subclass of ``base``; nested
    specs inside ``init_args`` must name :class:`Configurable` components. Nothing is called
    before every class of the spec has passed those checks.

    Args:
        spec: An instance or a spec dict.
        base: The class the slot expects (``ItemEncoder``, ``Loss``...).
        slot: The slot's name for error messages (``item_encoders[0]``).
        trusted: Packages outside mmrec whose modules may be imported to find a class.
    """
    if isinstance(spec, base):
        return spec
    if not is_spec(spec):
        raise TypeError(
            f"{slot}: {type(spec).__name__} is not {_a(base.__name__)} (nor a "
            "class_path/init_args dict); check the component lists"
        )
    build = _plan(spec, base, slot, trusted)  # checks everything first
    return build()


def _plan(spec: dict, base: type, slot: str, trusted: Sequence[str]):
    cls = resolve_class(spec["class_path"], base, slot, trusted)
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise TypeError(f"{slot}: init_args must be a mapping, got {type(init_args).__name__}")
    plans = {k: _plan_value(v, f"{slot}.{k}", trusted) for k, v in init_args.items()}

    def build():
        return cls(**{k: p() for k, p in plans.items()})

    return build


def _plan_value(value: Any, where: str, trusted: Sequence[str]):
    if is_spec(value):
        return _plan(value, Configurable, where, trusted)
    if isinstance(value, list):
        parts = [_plan_value(v, f"{where}[{i}]", trusted) for i, v in enumerate(value)]
        return lambda: [p() for p in parts]
    if isinstance(value, dict):
        parts = {k: _plan_value(v, f"{where}.{k}", trusted) for k, v in value.items()}
        return lambda: {k: p() for k, p in parts.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return lambda: value
    raise TypeError(f"{where}: {type(value).__name__} is not a plain configuration value")


def bool_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``--name`` alone (end of the line, or followed by another option) becomes
    ``--name true``, so boolean options of jsonargparse commands also work as flags."""
    out, argv = [], list(argv)
    for i, arg in enumerate(argv):
        out.append(arg)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in {f"--{n}" for n in names} and (nxt is None or nxt.startswith("--")):
            out.append("true")
    return out
