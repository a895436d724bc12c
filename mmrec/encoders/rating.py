"""Star rating of each history event as an event-side encoder (MLP; missing ratings learned)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmrec.encoders.base import BuildContext, EventEncoder


class RatingEncoder(EventEncoder):
    """Embeds ``batch["ratings"] [B, L]`` with a small MLP; NaN (missing) gets a learned vector.

    Args:
        hidden: Width of the MLP's hidden layer.
        center: Rating subtracted before the MLP (the middle of a 1..5 scale).
        scale: Divisor applied after centring.
        init_std: Initial scale of the output (the item-ID embeddings' std, 0.02 by default). With
            PyTorch's default Linear init the output started ~15x larger than the ID embeddings
            (per-token RMS ~0.33 vs 0.02), one near-constant vector for the mostly 5-star events,
            and on All_Beauty 2023 ID + rating fell to NDCG@10 0.034 from ID only's 0.058.
    """

    supports_packing = True  # per-slot features only

    def __init__(
        self, hidden: int = 32, center: float = 3.0, scale: float = 2.0, init_std: float = 0.02
    ) -> None:
        super().__init__()
        self.init_std = init_std
        self.hidden = hidden
        self.center = center
        self.scale = scale

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.mlp = nn.Sequential(
            nn.Linear(1, self.hidden), nn.GELU(), nn.Linear(self.hidden, ctx.d_model)
        )
        out = self.mlp[-1]
        nn.init.normal_(out.weight, std=self.init_std / self.hidden**0.5)
        nn.init.zeros_(out.bias)
        self.missing = nn.Parameter(torch.zeros(ctx.d_model))
        nn.init.normal_(self.missing, std=self.init_std)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # -> [B, L, D]
        ratings = batch["ratings"]  # [B, L] float, NaN = missing or pad
        missing = torch.isnan(ratings)
        x = (
            (torch.nan_to_num(ratings.float(), nan=self.center) - self.center) / self.scale
        ).unsqueeze(-1)
        out = torch.where(missing.unsqueeze(-1), self.missing.to(x.dtype), self.mlp(x))  # [B, L, D]
        return out * batch["mask"].unsqueeze(-1).to(out.dtype)
