"""Learned item-ID embedding: the SASRec item table as an item-side encoder."""

from __future__ import annotations

from torch import Tensor, nn

from mmrec.encoders.base import BuildContext, ItemEncoder


class ItemIdEncoder(ItemEncoder):
    """One learned vector per item id (row 0 is padding and stays zero).

    Args:
        dropout: Dropout on the looked-up vectors during training.
        init_std: Standard deviation of the normal initialisation.
    """

    def __init__(self, dropout: float = 0.0, init_std: float = 0.02) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.init_std = init_std

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.embedding = nn.Embedding(ctx.num_items + 1, ctx.d_model, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=self.init_std)
        self.embedding.weight.data[0].zero_()

    def forward(self, item_idx: Tensor) -> Tensor:  # [...] -> [..., D]
        return self.dropout(self.embedding(item_idx))
