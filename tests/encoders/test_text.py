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


def test_review_lookup_without_event_rows(dataset):
    """Without ``event_rows`` the (user, item, timestamp) of each event finds its row."""
    enc = ReviewTextEncoder()
    enc.build(_ctx(dataset))
    b = _batch()
    rows = b.pop("event_rows")
    assert torch.equal(enc.event_rows(b), rows)
    torch.testing.assert_close(enc(b), enc(dict(b, event_rows=rows)))
    b["timestamps"] = b["timestamps"] + 1000  # events that are not in the table: no review
    assert enc.event_rows(b).eq(0).all()
    out = enc(b)
    assert torch.equal(out[0, 3], enc.no_review.detach())


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
    from mmrec.encoders.features import CachedFeatureEncoder, write_features
    from mmrec.encoders.item_id import ItemIdEncoder

    ctx = BuildContext(num_items=300, num_users=2, d_model=64, data_dir=str(tmp_path))
    write_features(tmp_path / "features" / "clip_text.safetensors", 301, dim=384)
    content, ids = CachedFeatureEncoder(check_fingerprint=False), ItemIdEncoder()
    content.build(ctx), ids.build(ctx)
    rows = torch.arange(1, 301)[content.present[1:]]
    c_norm = content(rows).norm(dim=-1).mean().item()
    i_norm = ids(rows).norm(dim=-1).mean().item()
    assert 0.5 < c_norm / i_norm < 2.0, (c_norm, i_norm)  # was ~50x with a unit-gain LayerNorm
    content(rows).sum().backward()
    assert content.proj.net[-1].weight.grad.abs().sum() > 0  # the gain learns from step one
