"""AttributeEncoder: tokens of brand/categories/attributes, price buckets, vocabulary rules."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from mmrec.encoders.attributes import AttributeEncoder, _tokens, price_bucket
from mmrec.encoders.base import BuildContext


def _items(tmp_path, **columns) -> BuildContext:
    n = len(next(iter(columns.values())))
    pl.DataFrame(
        {"item_idx": list(range(1, n + 1)), "item_id": [f"I{i}" for i in range(n)], **columns}
    ).write_parquet(tmp_path / "items.parquet")
    return BuildContext(num_items=n, num_users=3, d_model=8, data_dir=str(tmp_path))


def test_tokens_of_each_field():
    assert _tokens("categories", "Beauty > Hair > Hair;Beauty > Skin") == [
        "categories=beauty", "categories=hair", "categories=skin"
    ]  # fmt: skip
    assert _tokens("attributes", "173 1 162") == [
        "attributes=173",
        "attributes=1",
        "attributes=162",
    ]
    assert _tokens("brand", " L'Oreal  Paris ") == ["brand=l'oreal paris"]
    assert _tokens("brand", None) == []
    assert price_bucket(None, 16) == 16 and price_bucket(0.0, 16) == 16
    assert price_bucket(0.5, 16) == 0 and price_bucket(1e6, 16) == 15
    assert price_bucket(9.0, 16) < price_bucket(90.0, 16)


def test_items_sharing_attributes_share_vectors(tmp_path):
    ctx = _items(
        tmp_path,
        brand=["Acme", "Acme", "Solo", None],
        categories=["Beauty > Hair", "Beauty > Hair", "Beauty > Hair", None],
        price=[10.0, 10.0, None, None],
    )
    enc = AttributeEncoder(min_count=2)
    enc.build(ctx)
    # vocab: brand=acme, categories=beauty, categories=hair (brand=solo is rare: 1 item)
    assert enc.vocab_size == 3 + 3
    vecs = enc.all_items()
    assert vecs.shape == (5, 8)
    torch.testing.assert_close(vecs[1], vecs[2])  # same brand, categories, price
    assert not torch.allclose(vecs[2], vecs[3])  # rare brand and missing price differ
    assert not torch.allclose(vecs[4], vecs[3])  # no value at all: the "none" vector
    torch.testing.assert_close(enc(torch.tensor([[2, 1]])), vecs[[2, 1]][None])
    # the price embedding: missing price is its own learned bucket
    assert enc.price_codes.tolist() == [0, price_bucket(10.0, 16), price_bucket(10.0, 16), 16, 16]


def test_fields_absent_from_the_data(tmp_path):
    ctx = _items(tmp_path, brand=["A", "A", "B"])
    enc = AttributeEncoder()  # unset: the fields present (brand only); no price column
    enc.build(ctx)
    assert not enc.has_price and enc.vocab_size == 3 + 1
    with pytest.raises(ValueError, match=r"no column\(s\) \['attributes'\].*--item_attributes"):
        AttributeEncoder(fields=["attributes"]).build(ctx)
    with pytest.raises(ValueError, match="unknown attribute fields"):
        AttributeEncoder(fields=["colour"])
