"""Structured item attributes (brand, category nodes, attribute ids, price): an item encoder."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

from mmrec.encoders.base import BuildContext, ItemEncoder

#: Categorical fields of items.parquet and how a value becomes tokens.
FIELDS = ("brand", "categories", "attributes")
_PAD, _RARE, _NONE = 0, 1, 2  # reserved token rows


def _tokens(field: str, value: object) -> list[str]:
    """The tokens of one field of one item (lower-cased, deduplicated, in order)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    elif field == "categories":  # "A > B > C" paths, several joined with "; " (2014)
        parts = [p for path in str(value).split(";") for p in path.split(">")]
    elif field == "attributes":
        parts = str(value).split()
    else:
        parts = [str(value)]
    out = [f"{field}={' '.join(p.lower().split())}" for p in parts if p and p.strip()]
    return list(dict.fromkeys(out))


def price_bucket(price: float | None, num_buckets: int, low: float = 0.5, high: float = 5000.0):
    """Log-spaced bucket ``0..num_buckets-1`` of a price; ``num_buckets`` when missing."""
    if price is None or not math.isfinite(price) or price <= 0:
        return num_buckets
    x = (math.log(price) - math.log(low)) / (math.log(high) - math.log(low))
    return min(num_buckets - 1, max(0, int(x * num_buckets)))


class AttributeEncoder(ItemEncoder):
    """Item vectors from structured attributes: ``item_idx [...] -> [..., D]``.

    Categorical values of ``items.parquet`` (``brand``; each node of the ``categories`` paths;
    the ids of an ``attributes`` column, e.g. the brand and category ids of S3-Rec's Beauty
    2014 file that ``mmrec prepare --item_attributes`` reads) become tokens; an item's vector is
    the mean of its tokens' embeddings (an ``EmbeddingBag``) plus an embedding of its
    log-bucketed price (a learned vector where the price is missing). Values held by fewer
    than ``min_count`` items share one "rare" vector; an item without any value gets a
    learned "none" vector. Works on every release: fields a dataset lacks are skipped when
    ``fields`` is unset. The vocabulary is rebuilt from items.parquet at ``build`` (it is
    item metadata, the same for every split: nothing from the interactions enters it), so a
    checkpoint stores only the embeddings. Items never seen in training get their
    attributes' vectors (cold start).

    Args:
        fields: Categorical fields to use (``brand``, ``categories``, ``attributes``); None:
            every one items.parquet has with at least one value.
        price: Add the price embedding (when items.parquet has a price column).
        price_buckets: Log-spaced price buckets between 0.5 and 5000.
        min_count: Values held by fewer items share the "rare" vector.
        dropout: Dropout on the output.
        init_std: Standard deviation of the embeddings at initialisation (the ID scale).
    """

    def __init__(
        self,
        fields: list[str] | None = None,
        price: bool = True,
        price_buckets: int = 16,
        min_count: int = 2,
        dropout: float = 0.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        unknown = set(fields or []) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown attribute fields {sorted(unknown)}; choose from {FIELDS}")
        self.fields = list(fields) if fields is not None else None
        self.price = price
        self.price_buckets = price_buckets
        self.min_count = min_count
        self.dropout_p = dropout
        self.init_std = init_std

    def build(self, ctx: BuildContext) -> None:
        import polars as pl

        super().build(ctx)
        if ctx.data_dir is None:
            raise ValueError("AttributeEncoder reads items.parquet: BuildContext needs data_dir")
        path = Path(ctx.data_dir) / "items.parquet"
        items = pl.read_parquet(path).sort("item_idx")
        if items.height != ctx.num_items:
            raise ValueError(f"{path} has {items.height} items, the model {ctx.num_items}")
        fields = self._fields(items, path)
        per_item = self._item_tokens(items, fields)
        counts = Counter(t for toks in per_item for t in set(toks))
        kept = sorted(t for t, c in counts.items() if c >= self.min_count)
        vocab = {t: i + 3 for i, t in enumerate(kept)}
        rows = [[vocab.get(t, _RARE) for t in toks] or [_NONE] for toks in per_item]
        flat = [_PAD] + [i for r in rows for i in r]  # item 0 (padding): the pad token
        offsets = [0, 1]
        for r in rows:
            offsets.append(offsets[-1] + len(r))
        self.register_buffer("tokens", torch.tensor(flat, dtype=torch.long), persistent=False)
        self.register_buffer(
            "offsets", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False
        )  # [N + 1]
        self.vocab_size = len(vocab) + 3
        self.bag = nn.EmbeddingBag(self.vocab_size, ctx.d_model, mode="mean", padding_idx=_PAD)
        nn.init.normal_(self.bag.weight, std=self.init_std)
        has_price = self.price and "price" in items.columns
        if has_price:
            buckets = [0] + [
                price_bucket(p, self.price_buckets) for p in items["price"].to_list()
            ]  # [N + 1]
            self.register_buffer("price_codes", torch.tensor(buckets), persistent=False)
            self.price_emb = nn.Embedding(self.price_buckets + 1, ctx.d_model)
            nn.init.normal_(self.price_emb.weight, std=self.init_std)
        self.has_price = has_price
        self.drop = nn.Dropout(self.dropout_p)

    def _fields(self, items, path: Path) -> list[str]:
        if self.fields is not None:
            missing = [f for f in self.fields if f not in items.columns]
            if missing:
                raise ValueError(
                    f"AttributeEncoder: {path} has no column(s) {missing}; prepare the data "
                    "with them (`mmrec prepare --item_attributes FILE` adds `attributes`) or "
                    "leave `fields` unset to use the ones present"
                )
            return self.fields
        return [f for f in FIELDS if f in items.columns and items[f].null_count() < items.height]

    @staticmethod
    def _item_tokens(items, fields: list[str]) -> list[list[str]]:
        if not fields:
            return [[] for _ in range(items.height)]
        columns = [items[f].to_list() for f in fields]
        return [
            [t for f, v in zip(fields, values, strict=True) for t in _tokens(f, v)]
            for values in zip(*columns, strict=True)
        ]

    def all_items(self) -> Tensor:
        """The whole catalogue: ``[N + 1, D]`` (row 0 is padding)."""
        out = self.bag(self.tokens, self.offsets)  # [N + 1, D]
        if self.has_price:
            out = out + self.price_emb(self.price_codes)
        return self.drop(out)

    def forward(self, item_idx: Tensor) -> Tensor:  # [...] -> [..., D]
        return self.all_items()[item_idx]

    @classmethod
    def example(cls, tmp_path: Path, ctx: BuildContext) -> tuple[AttributeEncoder, BuildContext]:
        """An encoder over a small items.parquet with every field (contract tests); a folder
        that has an items.parquet already keeps it."""
        import dataclasses

        import polars as pl

        n = ctx.num_items
        if (Path(tmp_path) / "items.parquet").is_file():
            return cls(), dataclasses.replace(ctx, data_dir=str(tmp_path))
        pl.DataFrame(
            {
                "item_idx": list(range(1, n + 1)),
                "item_id": [f"I{i}" for i in range(n)],
                "brand": [["Acme", "Zenith", None][i % 3] for i in range(n)],
                "categories": [f"Beauty > {['Hair', 'Skin'][i % 2]}" for i in range(n)],
                "attributes": [" ".join(str(j) for j in range(i % 4)) or None for i in range(n)],
                "price": [None if i % 5 == 0 else float(3 + 7 * i) for i in range(n)],
            }
        ).write_parquet(Path(tmp_path) / "items.parquet")
        return cls(), dataclasses.replace(ctx, data_dir=str(tmp_path))
