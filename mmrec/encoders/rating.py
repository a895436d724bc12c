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
    """

    supports_packing = True  # per-slot features only

    def __init__(self, hidden: int = 32, center: float = 3.0, scale: float = 2.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.center = center
        self.scale = scale

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.mlp = nn.Sequential(nn.Linear(1, self.hidden), nn.GELU(), nn.Linear(self.hidden, ctx.d_model))
        self.missing = nn.Parameter(torch.zeros(ctx.d_model))
        nn.init.normal_(self.missing, std=0.02)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # -> [B, L, D]
        ratings = batch["ratings"]  # [B, L] float, NaN = missing or pad
        missing = torch.isnan(ratings)
        x = ((torch.nan_to_num(ratings.float(), nan=self.center) - self.center) / self.scale).unsqueeze(-1)
        out = torch.where(missing.unsqueeze(-1), self.missing.to(x.dtype), self.mlp(x))  # [B, L, D]
        return out * batch["mask"].unsqueeze(-1).to(out.dtype)
