"""Optimisation helpers of the model: weight decay by module type, the learning-rate schedule."""

from __future__ import annotations

import math

from torch import nn
from transformers.pytorch_utils import Conv1D

#: Module types whose ``weight`` gets weight decay; every other parameter (embeddings, norms,
#: biases, free vectors and gates) does not. Decided by type, so renaming an attribute never
#: changes training. GPT-2's ``Conv1D`` is a linear layer with transposed weights.
DECAYED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, Conv1D)


def lr_factor(step: int, warmup: int, total: int | None, ratio: float | None) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warm-up over ``warmup``
    steps, then 1 (``ratio`` None) or a cosine from 1 to ``ratio`` at step ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if ratio is None or total is None or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters with and without weight decay, decided by module type.

    The ``weight`` of a module of one of :data:`DECAYED_TYPES` is decayed; everything else
    (embedding tables, norms, biases, vectors and gates owned directly by a module) is not.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_decayed = isinstance(module, DECAYED_TYPES) and name == "weight"
            (decay if is_decayed else no_decay).append(p)
    return decay, no_decay
