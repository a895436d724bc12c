"""Ablation example: an encoder subclass that overrides one method, used by configs/ablations/."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mmrec.encoders.item_id import ItemIdEncoder


class CosineItemIdEncoder(ItemIdEncoder):
    """Item-ID vectors projected onto a sphere of radius ``scale`` (cosine scoring).

    Only ``forward`` changes; ``all_items`` (scoring) and the history tokens follow, because
    both go through ``forward``. Point a config at it with
    ``class_path: mmrec.encoders.examples.CosineItemIdEncoder``.

    Args:
        scale: Norm of every item vector (the softmax temperature is ``1 / scale``).
        dropout: Dropout on the looked-up vectors during training.
        init_std: Standard deviation of the normal initialisation.
    """

    def __init__(self, scale: float = 4.0, dropout: float = 0.0, init_std: float = 0.02) -> None:
        super().__init__(dropout=dropout, init_std=init_std)
        self.scale = scale

    def forward(self, item_idx: Tensor) -> Tensor:  # [...] -> [..., D]
        return self.scale * F.normalize(super().forward(item_idx), dim=-1)
