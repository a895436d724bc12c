"""The features-file format: old files still load, rows and staleness checks, fingerprints."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from mmrec.content.features import (
    FORMAT,
    check_fresh,
    features_path,
    inputs_sha256,
    load_features,
    read_fingerprint,
    write_random_features,
)
from mmrec.content.inputs import TEXT_RECIPE, ItemImage, ItemText, ReviewText
from tests.content.helpers import write_dataset


def _old_file(ds, modality, inputs, dim=4):
    """A features file as `mmrec embed` wrote it before content/features.py existed."""
    rows = len(inputs) + 1
    fp = {
        "amazon_full_size": "True",
        "format": "mmrec-features/1",
        "encoder": "clip:ViT-B/32",
        "weights_sha256": "a" * 64,
        "items_sha256": inputs_sha256(inputs),
        "modality": modality,
        "rows": str(rows),
        "text_recipe": TEXT_RECIPE if modality == "text" else "",
    }
    feats = torch.arange(rows * dim, dtype=torch.float32).reshape(rows, dim)
    feats[0] = 0
    present = torch.ones(1, rows, dtype=torch.bool)
    present[0, 0] = False
    file = ds / "features" / f"clip_{modality}.safetensors"
    file.parent.mkdir(exist_ok=True)
    meta = {"fingerprint": json.dumps(fp), "dim": str(dim)}
    save_file({"features": feats, "present": present}, str(file), metadata=meta)
    return file, feats


@pytest.mark.parametrize("modality", [ItemText(), ItemImage(), ReviewText()], ids=lambda m: m.name)
def test_old_files_load_and_pass_the_check(tmp_path, modality):
    ds = write_dataset(tmp_path / "ds", [["http://x/a.jpg"], [], ["file:///b.jpg"]])
    file, feats = _old_file(ds, modality.name, modality.load(ds))
    got, present, fp = load_features(file, feats.shape[0], ds)
    torch.testing.assert_close(got, feats)
    assert present.tolist() == [False] + [True] * (feats.shape[0] - 1)
    assert fp == read_fingerprint(file) and fp["format"] == FORMAT
    check_fresh(file, fp, modality, ds)  # unchanged inputs: fresh


def test_stale_reviews_and_wrong_modality_refused(tmp_path):
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(3)])
    file, _ = _old_file(ds, "review", ReviewText().load(ds))
    inter = pl.read_parquet(ds / "interactions.parquet")
    inter.with_columns(pl.col("review").str.to_uppercase()).write_parquet(
        ds / "interactions.parquet"
    )
    fp = read_fingerprint(file)
    with pytest.raises(ValueError, match=r"stale.*mmrec embed --dataset .* --modalities review"):
        check_fresh(file, fp, ReviewText(), ds)
    with pytest.raises(ValueError, match="holds 'review' features, not 'text'"):
        check_fresh(file, fp, ItemText(), ds)


def test_rows_and_missing_file_errors_name_the_command(tmp_path):
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(3)])
    file, _ = _old_file(ds, "text", ItemText().load(ds))
    cmd = f"mmrec embed --dataset {ds} --modalities text --force true"
    with pytest.raises(ValueError, match="has 4 rows but the dataset needs 5") as e:
        load_features(file, 5, ds)
    assert cmd in str(e.value)
    with pytest.raises(FileNotFoundError, match=f"run `mmrec embed --dataset {ds}"):
        load_features(ds / "features" / "nothing.safetensors", 4, ds)
    assert features_path(ds, "clip_text", None) == file
    assert features_path(None, "x", file) == file
    with pytest.raises(ValueError, match="set `path`"):
        features_path(None, "clip_text", None)


def test_read_fingerprint_of_unreadable_files(tmp_path):
    assert read_fingerprint(tmp_path / "absent.safetensors") is None
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert read_fingerprint(tmp_path / "junk.safetensors") is None
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    assert read_fingerprint(tmp_path / "bare.safetensors") is None


def test_random_features(tmp_path):
    file = write_random_features(tmp_path / "f" / "r.safetensors", 7, dim=3, seed=1)
    feats, present, fp = load_features(file, 7)
    assert feats.shape == (7, 3) and fp["modality"] == "random"
    assert present.tolist() == [False, True, True, False, True, True, False]
    assert (feats[~present] == 0).all() and (feats[present] != 0).all()


def test_random_features_fingerprinted_with_a_dataset(tmp_path):
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(4)])
    file = ds / "features" / "r.safetensors"
    write_random_features(file, 5, modality=ItemText(), dataset=ds)
    _, _, fp = load_features(file, 5, ds)
    assert (fp["modality"], fp["encoder"], fp["text_recipe"]) == ("text", "random:0", TEXT_RECIPE)
    check_fresh(file, fp, ItemText(), ds)  # examples build with the check on
    with pytest.raises(ValueError, match="has 4 text rows, not 5"):
        write_random_features(file, 6, modality=ItemText(), dataset=ds)
