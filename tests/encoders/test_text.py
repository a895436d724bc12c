"""Sentence-model item text encoder and the history-only review encoder."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from mmrec.content.embed import main
from mmrec.encoders.base import BuildContext
from mmrec.encoders.text import ReviewTextEncoder, SentenceTextEncoder
from tests.content.helpers import tiny_sentence_model, write_dataset

D = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    model = tiny_sentence_model(root / "bert")
    ds = write_dataset(root / "ds", [[] for _ in range(7)])
    args = ["--dataset", str(ds), "--model", str(model), "--device", "cpu", "--name", "minilm"]
    assert main([*args, "--modalities", "text", "review"]) == 0
    return ds


def _ctx(ds):
    return BuildContext(num_items=7, num_users=2, d_model=D, data_dir=str(ds))


def test_sentence_text_encoder(dataset):
    enc = SentenceTextEncoder()  # reads features/minilm_text.safetensors
    enc.build(_ctx(dataset))
    out = enc(torch.tensor([[1, 7], [0, 3]]))
    assert out.shape == (2, 2, D)
    assert enc.all_items().shape == (8, D)
    assert not torch.allclose(out[0, 1], enc.missing)  # item 7: no interactions, has text


def _batch():
    # user 0: interaction rows 0,1,2 (left-padded to L=4); user 1: rows 4,5 (see write_dataset)
    rows = torch.tensor([[0, 1, 2, 3], [0, 0, 5, 6]])
    mask = rows > 0
    items = torch.tensor([[0, 1, 2, 3], [0, 0, 5, 6]])
    ts = torch.tensor([[0, 1, 2, 3], [0, 0, 2, 3]])
    return {
        "event_rows": rows,
        "mask": mask,
        "item_ids": items,
        "timestamps": ts,
        "user_idx": torch.tensor([0, 1]),
    }


def test_review_encoder_history_rows(dataset):
    torch.manual_seed(0)
    enc = ReviewTextEncoder()  # features/minilm_review.safetensors: 6 rows + padding
    enc.build(_ctx(dataset))
    b = _batch()
    before = {k: v.clone() for k, v in b.items()}
    out = enc(b)
    assert out.shape == (2, 4, D)
    assert all(torch.equal(b[k], before[k]) for k in b)  # batch not mutated
    assert (out[~b["mask"]] == 0).all()  # padding: zeros
    assert torch.equal(out[0, 2], enc.no_review.detach())  # interaction row 1: review None
    assert not torch.allclose(out[0, 1], enc.no_review)  # row 0: "great red lipstick"
    assert not torch.allclose(out[0, 1], out[0, 3])  # different reviews, different vectors
    # outputs at real positions do not depend on what sits at padded positions
    b2 = dict(b, event_rows=b["event_rows"].masked_fill(~b["mask"], 6))
    torch.testing.assert_close(enc(b2)[b["mask"]], out[b["mask"]])


def test_review_features_are_the_rows_event_rows_name(dataset):
    """Each real slot gets the projected (normalised) features row ``event_rows`` points at."""
    from safetensors.torch import load_file

    enc = ReviewTextEncoder()
    enc.build(_ctx(dataset))
    raw = load_file(str(dataset / "features" / "minilm_review.safetensors"))["features"]
    b = _batch()
    out = enc(b)
    want = enc.proj(torch.nn.functional.normalize(raw[[1, 3, 6]], dim=-1))  # rows 0, 2, 5
    torch.testing.assert_close(out[[0, 0, 1], [1, 3, 3]], want)


def test_review_encoder_needs_event_rows(dataset):
    enc = ReviewTextEncoder()
    enc.build(_ctx(dataset))
    b = _batch()
    b.pop("event_rows")
    with pytest.raises(KeyError, match="the datamodule must provide it"):
        enc(b)


def test_review_encoder_packed_equals_per_row(dataset):
    """Two users packed into one row (segments) give the same per-slot vectors as one row each."""
    enc = ReviewTextEncoder()
    enc.build(_ctx(dataset))
    assert ReviewTextEncoder.supports_packing
    per_row = _batch()
    packed = {
        "event_rows": torch.tensor([[1, 2, 3, 5, 6]]),
        "mask": torch.ones(1, 5, dtype=torch.bool),
        "item_ids": torch.tensor([[1, 2, 3, 5, 6]]),
        "timestamps": torch.tensor([[1, 2, 3, 2, 3]]),
        "segments": torch.tensor([[1, 1, 1, 2, 2]]),
        "positions": torch.tensor([[0, 1, 2, 0, 1]]),
        "user_idx": torch.tensor([0, 1]),
    }
    a, p = enc(per_row), enc(packed)
    torch.testing.assert_close(p[0], a[per_row["mask"]])


def test_stale_review_features_refused(dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    inter = pl.read_parquet(ds / "interactions.parquet")
    reviews = inter["review"].to_list()
    reviews[0] = "bad lipstick"  # same rows, another review
    inter.with_columns(pl.Series("review", reviews)).write_parquet(ds / "interactions.parquet")
    with pytest.raises(ValueError, match=r"stale.*--modalities review --force true"):
        ReviewTextEncoder().build(_ctx(ds))
    ReviewTextEncoder(check_fingerprint=False).build(_ctx(ds))
    # the item texts did not change: the item-side features are still fresh
    SentenceTextEncoder().build(_ctx(ds))


def test_review_encoder_row_count_checked(dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    pl.read_parquet(ds / "interactions.parquet").head(4).write_parquet(ds / "interactions.parquet")
    with pytest.raises(ValueError, match="rows but the dataset needs 5"):
        ReviewTextEncoder().build(_ctx(ds))


def test_content_vectors_start_at_the_id_embedding_scale(tmp_path):
    """The projected content starts at std ~0.02 per dimension, like ItemIdEncoder's init, so
    frozen text features do not swamp the ID embeddings; the gain is learned."""
    from mmrec.content.features import write_random_features
    from mmrec.encoders.features import CachedFeatureEncoder
    from mmrec.encoders.item_id import ItemIdEncoder

    ctx = BuildContext(num_items=300, num_users=2, d_model=64, data_dir=str(tmp_path))
    write_random_features(tmp_path / "features" / "clip_text.safetensors", 301, dim=384)
    content, ids = CachedFeatureEncoder(check_fingerprint=False), ItemIdEncoder()
    content.build(ctx), ids.build(ctx)
    rows = torch.arange(1, 301)[content.present[1:]]
    c_norm = content(rows).norm(dim=-1).mean().item()
    i_norm = ids(rows).norm(dim=-1).mean().item()
    assert 0.5 < c_norm / i_norm < 2.0, (c_norm, i_norm)  # was ~50x with a unit-gain LayerNorm
    content(rows).sum().backward()
    assert content.proj.net[-1].weight.grad.abs().sum() > 0  # the gain learns from step one
