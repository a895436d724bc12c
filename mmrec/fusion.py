"""Fusion: combine the outputs of several item-side encoders into one d_model vector per item."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmrec.config import Configurable


class Fusion(Configurable, nn.Module):
    """Base: ``build(d_model, num_inputs)`` creates parameters;
    ``forward(list of [..., D]) -> [..., D]``."""

    def __init__(self) -> None:
        super().__init__()
        self.d_model = 0
        self.num_inputs = 0

    def build(self, d_model: int, num_inputs: int) -> None:
        """Create parameters for ``num_inputs`` inputs of width ``d_model``."""
        if num_inputs < 1:
            raise ValueError("fusion needs at least one item encoder")
        self.d_model = d_model
        self.num_inputs = num_inputs

    def _check(self, xs: list[Tensor]) -> None:
        if len(xs) != self.num_inputs:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_inputs} inputs, got {len(xs)}"
            )

    def forward(self, xs: list[Tensor]) -> Tensor:  # list of [..., D] -> [..., D]
        raise NotImplementedError


class SumFusion(Fusion):
    """Element-wise sum of the encoder outputs (no parameters)."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        self._check(xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class ConcatLinearFusion(Fusion):
    """Concatenate the encoder outputs and project back to d_model: ``Linear(k*D, D)``.

    Args:
        dropout: Dropout on the concatenation.
    """

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def build(self, d_model: int, num_inputs: int) -> None:
        super().build(d_model, num_inputs)
        self.proj = nn.Linear(num_inputs * d_model, d_model)

    def forward(self, xs: list[Tensor]) -> Tensor:
        self._check(xs)
        return self.proj(self.dropout(torch.cat(xs, dim=-1)))


class GatedFusion(Fusion):
    """Per-item softmax gate over encoders: ``sum_i g_i(x) * x_i``, gates from the concatenation.

    Args:
        temperature: Softmax temperature of the gate.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def build(self, d_model: int, num_inputs: int) -> None:
        super().build(d_model, num_inputs)
        self.gate = nn.Linear(num_inputs * d_model, num_inputs)
        nn.init.zeros_(self.gate.weight)  # start as a plain average
        nn.init.zeros_(self.gate.bias)

    def forward(self, xs: list[Tensor]) -> Tensor:
        self._check(xs)
        stacked = torch.stack(xs, dim=-2)  # [..., k, D]
        weights = torch.softmax(
            self.gate(torch.cat(xs, dim=-1)) / self.temperature, dim=-1
        )  # [..., k]
        return (weights.unsqueeze(-1) * stacked).sum(-2) * self.num_inputs
