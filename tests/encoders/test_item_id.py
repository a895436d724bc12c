"""ItemIdEncoder and ContentInitItemIdEncoder: the ID table started from item content."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
import torch

from mmrec.content.features import write_features, write_random_features
from mmrec.content.inputs import ItemText
from mmrec.encoders.base import BuildContext
from mmrec.encoders.item_id import ContentInitItemIdEncoder, ItemIdEncoder, principal_init
from tests.content.helpers import write_dataset


def test_principal_init_keeps_the_content_geometry():
    """Features on a 2-D plane of a 10-D space: the first two dimensions of the table are that
    plane (distances between items kept up to one scale), the rest of a present item is noise
    beyond the rank, absent items and padding follow the rules."""
    g = torch.Generator().manual_seed(0)
    coords = torch.randn(40, 2, generator=g) * torch.tensor([3.0, 1.0])
    basis = torch.linalg.qr(torch.randn(10, 2, generator=g))[0]  # [10, 2] orthonormal
    feats = torch.cat([torch.zeros(1, 10), coords @ basis.T + 5.0 * basis[:, 0]])  # off origin
    present = torch.ones(41, dtype=torch.bool)
    present[0] = present[7] = False
    table = principal_init(feats, present, dim=6, std=0.02)
    assert table.shape == (41, 6)
    assert torch.equal(table[0], torch.zeros(6))
    z = table[present][:, :2]
    assert z.std().item() == pytest.approx(0.02, rel=1e-4)
    # the normalised, centred features: pairwise distances are those of z times one constant
    x = torch.nn.functional.normalize(feats[present].double(), dim=-1)
    dx, dz = torch.cdist(x, x), torch.cdist(z.double(), z.double())
    off = ~torch.eye(len(z), dtype=torch.bool)
    ratio = dz[off] / dx[off]
    assert ratio.std() / ratio.mean() < 1e-3
    # variance ordered: the first component carries more than the second
    assert z[:, 0].var() > z[:, 1].var()
    # dims 2.. of present items and every dim of item 7 are N(0, 0.02) noise
    assert 0.01 < table[present][:, 2:].std().item() < 0.03
    assert table[7].abs().max() > 0


def test_principal_init_narrower_content_than_the_model():
    feats = torch.randn(9, 3)
    present = torch.ones(9, dtype=torch.bool)
    present[0] = False
    table = principal_init(feats, present, dim=8, std=0.05)
    assert table.shape == (9, 8) and torch.isfinite(table).all()
    assert table[1:, :3].std().item() == pytest.approx(0.05, rel=1e-4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ds = write_dataset(tmp_path_factory.mktemp("item_id") / "ds", [[] for _ in range(7)])
    # fingerprinted as `mmrec embed` would for these titles; every 3rd row absent
    write_random_features(
        ds / "features" / "minilm_text.safetensors", 8, dim=8, modality=ItemText(), dataset=ds
    )
    return ds


def _ctx(ds, d=4):
    return BuildContext(num_items=7, num_users=2, d_model=d, data_dir=str(ds))


def test_init_from_features_file(dataset):
    from mmrec.content.features import load_features

    enc = ContentInitItemIdEncoder(init_from="minilm_text", init_std=0.02)
    enc.build(_ctx(dataset))
    feats, present, _ = load_features(dataset / "features" / "minilm_text.safetensors", 8)
    want = principal_init(feats, present, 4, 0.02)
    got = enc.embedding.weight.detach()
    assert int(present.sum()) == 5  # items 1, 2, 4, 5, 7
    # the content part is deterministic (up to the sign of each component); 5 centred points
    # span 4 dimensions
    for j in range(4):
        a, b = got[present, j], want[present, j]
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, -b, atol=1e-5)
    assert torch.equal(got[0], torch.zeros(4))
    assert not hasattr(enc, "features")  # read once, not kept in the module or checkpoint
    plain = ItemIdEncoder()
    plain.build(_ctx(dataset))
    assert set(enc.state_dict()) == set(plain.state_dict()) == {"embedding.weight"}
    # the table trains as a plain embedding
    enc(torch.tensor([1, 2])).sum().backward()
    assert enc.embedding.weight.grad[1].abs().sum() > 0


def test_init_from_refuses_stale_or_missing_features(dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    items = pl.read_parquet(ds / "items.parquet")
    titles = items["title"].to_list()
    titles[0] = "another title"
    items.with_columns(pl.Series("title", titles)).write_parquet(ds / "items.parquet")
    with pytest.raises(ValueError, match=r"stale.*--force true"):
        ContentInitItemIdEncoder(init_from="minilm_text").build(_ctx(ds))
    ContentInitItemIdEncoder(init_from="minilm_text", check_fingerprint=False).build(_ctx(ds))
    with pytest.raises(FileNotFoundError, match="mmrec embed --dataset"):
        ContentInitItemIdEncoder(init_from="clip_text").build(_ctx(ds))


def test_principal_init_identical_features_fall_back_to_noise():
    # one 384-d vector for every item (a degenerate text model): centring leaves only
    # rounding noise (~1e-16), which must not be taken for components
    feats = torch.randn(384, generator=torch.Generator().manual_seed(0)).repeat(6, 1)
    present = torch.arange(6) > 0
    torch.manual_seed(3)
    table = principal_init(feats, present, dim=3, std=0.02)
    torch.manual_seed(3)
    noise = torch.randn(6, 3) * 0.02
    noise[0] = 0.0
    # exactly the random start: no component is made of the SVD's rounding noise
    assert torch.equal(table, noise)


def test_init_from_unknown_modality_needs_check_off(tmp_path):
    file = tmp_path / "features" / "mine.safetensors"
    file.parent.mkdir(parents=True)
    write_features(file, torch.randn(8, 5), torch.arange(8) > 0, {"modality": "random"})
    with pytest.raises(ValueError, match="check_fingerprint=False"):
        ContentInitItemIdEncoder(init_from="mine").build(_ctx(tmp_path))
    enc = ContentInitItemIdEncoder(init_from="mine", check_fingerprint=False)
    enc.build(_ctx(tmp_path))
    assert enc.embedding.weight[1:, :4].std().item() == pytest.approx(0.02, rel=1e-3)
