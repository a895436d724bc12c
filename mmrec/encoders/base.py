"""Base contracts for item-side and event-side encoders (the plug-in point for ablations)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mmrec.config import Configurable


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
