"""Base contracts for item-side and event-side encoders (the plug-in point for ablations)."""

from __future__ import annotations

from dataclasses import dataclass

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


class Encoder(nn.Module):
    """Common base: construct with hyper-parameters, then ``build(ctx)`` creates parameters.

    Subclasses create their parameters in ``build`` (called exactly once, before training or
    checkpoint loading), so ``__init__`` never needs data-dependent sizes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._built = False
        self.d_model: int = 0

    def build(self, ctx: BuildContext) -> None:
        """Create parameters for the dataset described by ``ctx``; subclasses call super()."""
        self.d_model = ctx.d_model
        self._built = True

    @property
    def built(self) -> bool:
        return self._built


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
    """

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # -> [B, L, D]
        raise NotImplementedError
