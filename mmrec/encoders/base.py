"""Base contracts for item-side and event-side encoders (the plug-in point for ablations)."""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class BuildContext:
    """What an encoder may need to know that only the data can tell.

    Passed by ``MMRecModule.__init__`` to ``build()`` of every encoder, so encoders stay
    constructor-configured (YAML ``class_path``/``init_args``) while sizes come from the data.

    Attributes:
        num_items: Number of real items; item ids are ``1..num_items``, 0 is padding.
        num_users: Number of users; user ids are ``0..num_users-1``.
        d_model: Width every encoder must output.
        data_dir: The prepared dataset folder (``features/``, ``users.parquet``...), or None.
        time_granularity: ``"day"`` or ``"second"`` (meta.json), or None when unknown.
    """

    num_items: int
    num_users: int
    d_model: int
    data_dir: str | None = None
    time_granularity: str | None = None


class Configurable:
    """Mixin that records the arguments a component was constructed with.

    Every subclass's ``__init__`` is wrapped so that the outermost call stores its bound
    arguments (defaults applied); ``component_spec(obj)`` turns them into a
    ``{"class_path", "init_args"}`` dict. ``MMRecModule`` stores these specs as
    hyper-parameters, so a checkpoint alone rebuilds the model with its encoders, whether the
    model was built by the CLI or in Python.
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
                            raise TypeError(f"{cls.__name__}: *args cannot be recorded; use keywords")
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
    return {"class_path": path, "init_args": {k: _spec_value(v, f"{path}.{k}") for k, v in args.items()}}


def instantiate(spec: Any) -> Any:
    """Build a component from a ``{"class_path", "init_args"}`` dict; other values pass through."""
    if isinstance(spec, list):
        return [instantiate(s) for s in spec]
    if not (isinstance(spec, dict) and "class_path" in spec):
        return spec
    module_name, _, name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"cannot import {spec['class_path']!r}: {err}") from err
    kwargs = {k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()}
    return cls(**kwargs)


class Encoder(Configurable, nn.Module):
    """Common base: construct with hyper-parameters, then ``build(ctx)`` creates parameters.

    Subclasses create their parameters in ``build`` (called exactly once, before training or
    checkpoint loading), so ``__init__`` never needs data-dependent sizes.

    Test hook: the encoder contract test (tests/test_encoders_contract.py) builds every
    concrete subclass it finds with ``cls.example(tmp_path, ctx)``. The default constructs
    ``cls()`` with the given context; an encoder that needs files (features, users.parquet)
    or required arguments overrides this classmethod, writes tiny files under ``tmp_path``
    and returns ``(encoder, ctx_with_data_dir)``. The test also requires that every trainable
    parameter receives a gradient from one forward (DDP fails on unused parameters) and that
    frozen ones (``requires_grad=False``) receive none.
    """

    def __init__(self) -> None:
        super().__init__()
        self._built = False
        self.d_model: int = 0

    def build(self, ctx: BuildContext) -> None:
        """Create parameters for the dataset described by ``ctx``; subclasses call super()."""
        if self._built:
            raise RuntimeError(f"{type(self).__name__}.build() called twice; build a new encoder")
        self.d_model = ctx.d_model
        self._built = True

    @property
    def built(self) -> bool:
        return self._built

    @classmethod
    def example(cls, tmp_path: Path, ctx: BuildContext) -> tuple[Encoder, BuildContext]:
        """An unbuilt instance and the context to build it with, for contract tests."""
        return cls(), ctx


class ItemEncoder(Encoder):
    """Item-side encoder: ``item_idx [...] -> [..., D]`` with ``D = d_model``.

    Row 0 (padding) may return anything; the model never scores it. Content encoders read
    cached per-item features so items never seen in training can still be scored.
    """

    num_items: int = 0

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.num_items = ctx.num_items

    def forward(self, item_idx: Tensor) -> Tensor:  # [...] -> [..., D]
        raise NotImplementedError

    def all_items(self) -> Tensor:
        """Vectors of the whole catalogue, padding row included: ``[num_items + 1, D]``."""
        device = next((p.device for p in self.parameters()), None)
        if device is None:
            device = next((b.device for b in self.buffers()), torch.device("cpu"))
        return self(torch.arange(self.num_items + 1, device=device))


class EventEncoder(Encoder):
    """Event-side encoder: ``batch -> [B, L, D]``, added to each history token.

    Reads only what an event may know: its own timestamp/rating/review and the query time.
    Never reads ``targets``/``target_items`` (that would leak). Must not mutate the batch.
    Outputs at real positions (``batch["mask"]``) must not depend on padded positions.

    ``supports_packing``: set True when the encoder is right on packed training batches
    (several users' segments per row, numbered by ``batch["segments"]``): it works per slot,
    or stops at segment borders, and does not read ``user_idx`` as one user per row. The
    model lets the datamodule pack only when every event encoder says so.
    """

    supports_packing: bool = False

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # -> [B, L, D]
        raise NotImplementedError
