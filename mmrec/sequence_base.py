"""The ``SequenceHead`` contract: what a sequence head of :class:`~mmrec.module.MMRecModule`
takes (history tokens, padding mask, packed segments) and returns (causal hidden states)."""

from __future__ import annotations

from torch import Tensor, nn

from mmrec.config import Configurable


class SequenceHead(Configurable, nn.Module):
    """Base of sequence heads: ``build(d_model, max_len)`` creates parameters; ``forward``
    maps history tokens to hidden states.

    ``forward(tokens [B, L, D], mask [B, L], segments=None, positions=None) -> [B, L, D]``:
    causal, so the state after event ``t`` sees events ``<= t`` only. Rows are left-padded
    (``mask`` False at padding); packed training batches also pass ``segments``/``positions``
    ``[B, L]`` (several users per row, numbered from 1, positions from each user's start) and
    the head must keep segments apart. ``last(tokens, mask) -> [B, D]`` is the state after
    the most recent event (evaluation and serving); override it when the last position alone
    is cheaper to compute. ``supports_packing``: set True when ``forward`` honours
    ``segments``/``positions``; the model refuses packed batches otherwise.
    """

    supports_packing: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.d_model = 0
        self.max_len = 0

    def build(self, d_model: int, max_len: int) -> None:
        """Create parameters for tokens of width ``d_model`` and histories up to ``max_len``."""
        self.d_model, self.max_len = d_model, max_len

    def load_pretrained(self) -> None:
        """Load pretrained weights into the built head (called once before training; no-op)."""

    def forward(
        self,
        tokens: Tensor,
        mask: Tensor,
        segments: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:  # [B, L, D], [B, L] -> [B, L, D]
        raise NotImplementedError

    def last(self, tokens: Tensor, mask: Tensor) -> Tensor:  # [B, L, D], [B, L] -> [B, D]
        """Hidden state after the last token of left-padded rows."""
        return self.forward(tokens, mask)[:, -1]
