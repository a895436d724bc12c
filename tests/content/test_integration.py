"""End to end: synthetic dataset -> `mmrec embed` (tiny CLIP) -> MMRecModule, content encoders."""

from __future__ import annotations

import lightning as L
import polars as pl
import pytest
import torch

from mmrec.content.embed import main
from mmrec.data.datamodule import AmazonDataModule
from mmrec.encoders.clip import CLIPImageEncoder, CLIPTextEncoder
from mmrec.encoders.item_id import ItemIdEncoder
from mmrec.encoders.text import ReviewTextEncoder
from mmrec.evaluation import evaluate_scores
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.synthetic.dataset import make_synthetic_dataset
from tests.content.helpers import jpeg_bytes, tiny_clip_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("int")
    ds = make_synthetic_dataset(root / "ds", num_users=60, num_items=40, seed=0)
    img_dir = root / "imgs"
    img_dir.mkdir()
    items = pl.read_parquet(ds / "items.parquet")
    urls = []
    for i in items["item_idx"].to_list():
        if i % 2:  # odd items have a local image, even ones none
            (img_dir / f"{i}.jpg").write_bytes(jpeg_bytes(i))
            urls.append([(img_dir / f"{i}.jpg").as_uri()])
        else:
            urls.append([])
    items.with_columns(pl.Series("image_urls", urls, dtype=pl.List(pl.String))).write_parquet(
        ds / "items.parquet"
    )
    inter = pl.read_parquet(ds / "interactions.parquet")
    reviews = [f"review number {r} love it" if r % 3 else None for r in range(inter.height)]
    inter.with_columns(pl.Series("review", reviews)).write_parquet(ds / "interactions.parquet")
    ckpt = tiny_clip_checkpoint(root / "tiny_clip.pt")
    args = ["--dataset", str(ds), "--model", str(ckpt), "--device", "cpu", "--workers", "2"]
    args += ["--allow_local_images", "true"]  # images are local files
    assert main([*args, "--modalities", "text", "image", "review"]) == 0
    return ds


def test_fit_and_validate_with_content_encoders(dataset, tmp_path):
    dm = AmazonDataModule(str(dataset), max_len=8, batch_size=32, eval_batch_size=64)
    dm.setup("fit")
    model = MMRecModule.for_data(
        dm,
        d_model=16,
        item_encoders=[ItemIdEncoder(), CLIPTextEncoder(), CLIPImageEncoder()],
        event_encoders=[ReviewTextEncoder(name="clip_review")],
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.0),
    )
    vecs = model.item_vectors()
    assert vecs.shape == (dm.num_items + 1, 16) and torch.isfinite(vecs).all()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    assert dm.pack_sequences is True  # the review encoder works per slot: packing stays on
    # every history event names its interaction row, so its review is found
    inter = pl.read_parquet(dataset / "interactions.parquet")
    batch = next(iter(dm.train_dataloader()))
    rows = model.event_encoders[0].event_rows(batch)
    mask = batch["mask"]
    assert (rows[mask] > 0).all() and (rows[~mask] == 0).all()
    r = rows[mask] - 1
    items_of_rows = torch.tensor(inter["item_idx"].to_numpy()).long()[r]
    assert torch.equal(batch["item_ids"][mask], items_of_rows)
    out = trainer.validate(model, dm, verbose=False)[0]
    # the logged value equals an independent evaluation of the model's full score matrix
    model.eval()
    with torch.no_grad():
        item_vecs = model.item_vectors()
        scores, targets, exclude = [], [], []
        for vb in dm.val_dataloader():
            scores.append(model.user_vectors(vb, item_vecs) @ item_vecs.T)
            targets += [t[t > 0].tolist() for t in vb["target_items"]]
            exclude += [e[e > 0].tolist() for e in vb["exclude_items"]]
    expected = evaluate_scores(torch.cat(scores), targets, exclude, ks=(10,))
    assert out["val/ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-6)
    text_proj = model.item_encoders[1].proj.net[1].weight
    assert text_proj.requires_grad and torch.isfinite(text_proj).all()
