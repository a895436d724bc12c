"""CLIP item encoders: cached features, missing vector, cold start, finetune, staleness."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from mmrec.content.embed import main
from mmrec.encoders.base import BuildContext
from mmrec.encoders.clip import CLIPImageEncoder, CLIPTextEncoder
from mmrec.encoders.features import CachedFeatureEncoder
from tests.content.helpers import ImageServer, tiny_clip_checkpoint, write_dataset

D = 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_clip_checkpoint(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ckpt):
    """8 items: 1, 2, 8 have images; 7 and 8 have no interactions (cold); 3 has no text."""
    server = ImageServer()
    root = tmp_path_factory.mktemp("data")
    urls = [[server.url("/a.jpg")], [server.url("/b.jpg")], [server.url("/corrupt.jpg")]]
    urls += [[server.url("/page.html")], [], [server.url("/gone.jpg")], [], [server.url("/c.png")]]
    texts = [{} for _ in range(8)]
    texts[2] = {"title": "", "description": "", "brand": "", "categories": ""}
    texts[6] = {"title": "Brand new lipstick", "description": "Never bought yet"}
    ds = write_dataset(root / "ds", urls, texts)
    args = ["--dataset", str(ds), "--model", str(ckpt), "--device", "cpu", "--timeout", "0.5"]
    args += ["--allow_local_images", "true"]  # the test server is on 127.0.0.1
    assert main([*args, "--modalities", "text", "image"]) == 0
    server.close()
    return ds


def _ctx(ds, n=8):
    return BuildContext(num_items=n, num_users=2, d_model=D, data_dir=str(ds))


def test_text_encoder_shapes_and_missing(dataset):
    torch.manual_seed(0)
    enc = CLIPTextEncoder()
    enc.build(_ctx(dataset))
    idx = torch.tensor([[1, 2, 3], [7, 0, 4]])
    out = enc(idx)
    assert out.shape == (2, 3, D)
    assert torch.equal(out[0, 2], enc.missing.detach())  # item 3 has no text
    assert not torch.equal(out[0, 0], enc.missing.detach())
    assert enc.all_items().shape == (9, D)
    assert [n for n, _ in enc.named_parameters() if "features" in n] == []  # frozen buffer
    assert "features" not in enc.state_dict()  # not persisted: checkpoints stay small


def test_image_encoder_missing_vector_for_unusable_images(dataset):
    enc = CLIPImageEncoder(hidden=8)
    enc.build(_ctx(dataset))
    out = enc.all_items()  # [9, D]
    miss = enc.missing.detach()
    for i in (3, 4, 5, 6, 7):  # corrupt, html, no url, 404, no url
        assert torch.equal(out[i], miss), i
    for i in (1, 2, 8):
        assert not torch.allclose(out[i], miss)
    assert not torch.allclose(out[1], out[2])
    out.sum().backward()
    assert enc.missing.grad is not None and enc.proj.net[1].weight.grad is not None


def test_cold_start_item_is_scored_from_content(dataset):
    """Item 7 has text but no interactions (items 1..6 only): a content vector, rankable."""
    inter = pl.read_parquet(dataset / "interactions.parquet")
    assert 7 not in set(inter["item_idx"].to_list())
    torch.manual_seed(0)
    enc = CLIPTextEncoder()
    enc.build(_ctx(dataset))
    vecs = enc.all_items()  # [9, D]
    assert not torch.allclose(vecs[7], enc.missing)
    assert (vecs[7] - vecs[1]).abs().max() > 1e-3  # distinct content, distinct vector
    hidden = vecs[7:8].detach()  # a user "asking" for something like item 7
    scores = hidden @ vecs[1:].T  # [1, N]
    assert torch.isfinite(scores).all()
    assert scores.argmax().item() + 1 == 7


def test_stale_features_refused(dataset, tmp_path):
    ds = tmp_path / "copy"
    ds.mkdir()
    for name in ("interactions.parquet", "users.parquet", "meta.json"):
        (ds / name).write_bytes((dataset / name).read_bytes())
    (ds / "features").mkdir()
    for f in ("clip_text.safetensors", "clip_image.safetensors"):
        (ds / "features" / f).write_bytes((dataset / "features" / f).read_bytes())
    items = pl.read_parquet(dataset / "items.parquet")
    items.with_columns(pl.col("title") + " v2").write_parquet(ds / "items.parquet")
    with pytest.raises(ValueError, match="stale.*--modalities text --force true"):
        CLIPTextEncoder().build(_ctx(ds))
    with pytest.raises(ValueError, match="stale"):  # generic: the file names its modality
        CachedFeatureEncoder(name="clip_text").build(_ctx(ds))
    CLIPImageEncoder().build(_ctx(ds))  # images unchanged: still valid
    CachedFeatureEncoder(name="clip_image").build(_ctx(ds))
    with pytest.raises(ValueError, match="holds 'image' features, not 'text'"):
        CLIPTextEncoder(name="clip_image").build(_ctx(ds))
    CLIPTextEncoder(check_fingerprint=False).build(_ctx(ds))
    with pytest.raises(ValueError, match="rows but the dataset needs"):
        CLIPTextEncoder(check_fingerprint=False).build(_ctx(ds, n=9))
    with pytest.raises(FileNotFoundError, match="mmrec embed"):
        CLIPTextEncoder(name="clip_nothing").build(_ctx(ds))


def test_finetune_text_runs_clip_and_trains_it(dataset, ckpt):
    torch.manual_seed(0)
    enc = CLIPTextEncoder(finetune=True, model=str(ckpt), chunk_size=3)
    enc.build(_ctx(dataset))
    frozen = CLIPTextEncoder()
    frozen.build(_ctx(dataset))
    assert enc.inputs.shape == (9, 77)
    feats = enc.content(torch.tensor([1, 4, 1]))  # CLIP in forward == cached features
    torch.testing.assert_close(feats, frozen.features[[1, 4, 1]], rtol=1e-4, atol=1e-4)
    out = enc(torch.tensor([[1, 2], [3, 7]]))
    assert out.shape == (2, 2, D)
    out.sum().backward()
    assert enc.clip.token_embedding.weight.grad is not None
    with pytest.raises(ValueError, match="needs `model`"):
        CLIPTextEncoder(finetune=True)


def test_finetune_image_reads_image_cache(dataset, ckpt):
    enc = CLIPImageEncoder(finetune=True, model=str(ckpt))
    # server is closed: only the warm cache of `mmrec embed` serves; item 3's cached file is
    # corrupt: counted and named, never skipped silently
    with pytest.warns(
        UserWarning,
        match=r"1 of 8 cached item images could not be decoded "
        r"\(item_idx 3\)",
    ):
        enc.build(_ctx(dataset))
    assert enc.present.tolist() == [False, True, True, False, False, False, False, False, True]
    frozen = CLIPImageEncoder()
    frozen.build(_ctx(dataset))
    cos = torch.nn.functional.cosine_similarity(
        enc.content(torch.tensor([1, 2, 8])), frozen.features[[1, 2, 8]]
    )
    assert (cos > 0.99).all()


def test_image_urls_changed_refused(dataset, tmp_path):
    import shutil

    ds = tmp_path / "copy"
    shutil.copytree(dataset, ds)
    items = pl.read_parquet(ds / "items.parquet")
    urls = items["image_urls"].to_list()
    urls[0] = ["http://127.0.0.1:1/other.jpg"]
    items.with_columns(pl.Series("image_urls", urls)).write_parquet(ds / "items.parquet")
    with pytest.raises(ValueError, match="stale.*--modalities image"):
        CLIPImageEncoder().build(_ctx(ds))
    CLIPTextEncoder().build(_ctx(ds))  # texts unchanged


def test_unknown_modality_is_not_checked_silently(tmp_path):
    from mmrec.content.features import write_random_features

    write_random_features(tmp_path / "features" / "clip_text.safetensors", 9)
    with pytest.raises(ValueError, match="'random' features.*check_fingerprint=False"):
        CachedFeatureEncoder().build(_ctx(tmp_path))
    enc = CachedFeatureEncoder(check_fingerprint=False)
    enc.build(_ctx(tmp_path))
    assert enc.all_items().shape == (9, D)
