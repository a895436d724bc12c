"""Learned item-ID embedding: the SASRec item table as an item-side encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmrec.content.inputs import ItemText
from mmrec.encoders.base import BuildContext, ItemEncoder
from mmrec.encoders.features import read_item_features, write_example_features


def principal_init(
    features: Tensor,
    present: Tensor,
    dim: int,
    std: float,
) -> Tensor:
    """An item table ``[N+1, dim]`` started from content: the first ``dim`` principal components
    of the (L2-normalised, centred) features of the items that have them, scaled as a whole so
    their standard deviation is ``std`` (the components keep their relative variances).

    Items without features, and the dimensions beyond the features' rank, start as
    ``N(0, std)`` (all of them when every item has the same features); row 0 (padding) is
    zero.
    """
    rows = features.shape[0]
    out = torch.randn(rows, dim) * std
    x = nn.functional.normalize(features[present].double(), dim=-1)
    if x.shape[0] >= 2:
        x = x - x.mean(0, keepdim=True)
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        tol = 1e-6 * x.shape[0] ** 0.5  # the rows have unit norm before centring
        k = min(dim, int((s > tol).sum()))  # identical features for every item: k = 0
        if k > 0:
            z = x @ vh[:k].T  # [n, k]
            out[present, :k] = (z * (std / z.std())).float()
    out[0] = 0.0
    return out


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


class ContentInitItemIdEncoder(ItemIdEncoder):
    """The item-ID table of ``ItemIdEncoder``, started from item content instead of noise.

    Each item starts as the first ``d_model`` principal components of its cached features
    (``features/<init_from>.safetensors``, written by ``mmrec embed``), scaled to ``init_std``
    (``principal_init``); items without features start random. From then on it is a plain
    trained ID table: the features are read once at build time and kept neither in the module
    nor in checkpoints, so the model has exactly ``ItemIdEncoder``'s parameters. Content reaches
    the model only through the starting point (as in Harte et al., RecSys 2023, "Leveraging
    large language models for sequential recommendation"). The features come from a frozen
    pretrained model of item content, so nothing from interactions enters.

    Args:
        init_from: Features file stem under ``{data_dir}/features/`` (e.g. ``minilm_text``,
            ``clip_text``, ``clip_image``).
        init_path: Explicit features file (overrides ``init_from``).
        dropout: Dropout on the looked-up vectors during training.
        init_std: Standard deviation of the starting table (content part and noise alike).
        check_fingerprint: Refuse features computed on another item table.
    """

    def __init__(
        self,
        init_from: str = "minilm_text",
        init_path: str | None = None,
        dropout: float = 0.0,
        init_std: float = 0.02,
        check_fingerprint: bool = True,
    ) -> None:
        super().__init__(dropout, init_std)
        self.init_from = init_from
        self.init_path = init_path
        self.check_fingerprint = check_fingerprint

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        feats, present = read_item_features(
            ctx, self.init_from, self.init_path, self.check_fingerprint
        )
        with torch.no_grad():
            self.embedding.weight.copy_(principal_init(feats, present, ctx.d_model, self.init_std))

    @classmethod
    def example(
        cls, tmp_path: Path, ctx: BuildContext
    ) -> tuple[ContentInitItemIdEncoder, BuildContext]:
        """An encoder started from random text features written under ``tmp_path``,
        fingerprinted with the folder's item table (a tiny one is written when it has none)."""
        enc = cls()
        return enc, write_example_features(tmp_path, ctx, enc.init_from, ItemText())
