"""Image fetching: every failure reason, retries, size/type checks, the disk cache, the report."""

from __future__ import annotations

import json

import pytest

from mmrec.content.images import (
    FetchReport,
    ImageFetcher,
    amazon_full_size,
    decode_jpegs_to_pixels,
    looks_like_image,
)
from tests.content.helpers import SLOW_S, ImageServer, jpeg_bytes, png_bytes


@pytest.fixture(scope="module")
def server():
    s = ImageServer()
    yield s
    s.close()


def _fetcher(tmp_path, **kw) -> ImageFetcher:
    args = dict(timeout=0.5, retries=1, backoff=0.05, max_bytes=50_000, num_workers=8)
    args.update(kw)
    return ImageFetcher(tmp_path / "cache", **args)


def test_reasons_per_url(server, tmp_path):
    f = _fetcher(tmp_path)
    (tmp_path / "local.png").write_bytes(png_bytes(7))
    cases = {
        server.url("/a.jpg"): "ok",
        server.url("/c.png"): "ok",
        server.url("/octet.jpg"): "ok",  # generic type: the bytes decide
        server.url("/corrupt.jpg"): "corrupt",
        server.url("/page.html"): "not_image",
        server.url("/nothing.jpg"): "missing",
        server.url("/big.png"): "too_large",
        (tmp_path / "local.png").as_uri(): "ok",
        (tmp_path / "absent.png").as_uri(): "missing",
        "ftp://example.invalid/x.jpg": "error",
    }
    for url, want in cases.items():
        assert f.fetch(url).reason == want, url
    ok = f.fetch(server.url("/a.jpg"))
    assert ok.path.read_bytes() == jpeg_bytes(1)


def test_timeout_is_retried_then_reported(server, tmp_path):
    f = _fetcher(tmp_path)
    before = server.hits["/slow.jpg"]
    r = f.fetch(server.url("/slow.jpg"))
    assert r.reason == "timeout"
    assert server.hits["/slow.jpg"] - before == 2  # first try + 1 retry
    assert not list((tmp_path / "cache").rglob("*.fail"))  # transient: not cached
    assert SLOW_S > 0.5


def test_503_retried_with_backoff(server, tmp_path):
    r = _fetcher(tmp_path).fetch(server.url("/flaky.jpg"))
    assert r.reason == "ok"
    assert server.hits["/flaky.jpg"] >= 2


def test_cache_avoids_network(server, tmp_path):
    f = _fetcher(tmp_path)
    urls = [server.url("/b.jpg"), server.url("/page.html")]
    first = [f.fetch(u).reason for u in urls]
    hits = (server.hits["/b.jpg"], server.hits["/page.html"])
    g = _fetcher(tmp_path)  # a new process reading the same cache
    assert [g.fetch(u).reason for u in urls] == first == ["ok", "not_image"]
    assert (server.hits["/b.jpg"], server.hits["/page.html"]) == hits
    assert g.network_fetches == 0


def test_fetch_item_takes_first_usable_url_and_report(server, tmp_path):
    f = _fetcher(tmp_path)
    items = [
        [server.url("/nothing.jpg"), server.url("/a.jpg")],
        [],
        None,
        [server.url("/page.html"), server.url("/nothing2.jpg")],
    ]
    res = f.fetch_many(items)
    assert [r.reason for r in res] == ["ok", "no_url", "no_url", "not_image"]
    report = FetchReport()
    for i, r in enumerate(res):
        report.add(f"item{i}", r)
    report.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["counts"]["ok"] == 1 and data["counts"]["no_url"] == 2
    assert data["counts"]["not_image"] == 1 and data["total"] == 4
    assert {x["item_id"] for x in data["failures"]} == {"item1", "item2", "item3"}
    assert "not_image=1" in report.summary()


def test_magic_bytes():
    assert looks_like_image(jpeg_bytes(0)[:16]) and looks_like_image(png_bytes(0)[:16])
    assert looks_like_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    assert not looks_like_image(b"<html><body>")


def test_torchvision_jpeg_decoding_matches_clip_preprocess():
    import io

    import clip
    from PIL import Image

    sizes = [(64, 40), None, (30, 50), (64, 40)]  # two of one size: resized as one batch
    datas = [jpeg_bytes(i, sz) if sz else b"\xff\xd8\xffjunk" for i, sz in enumerate(sizes)]
    pixels, ok = decode_jpegs_to_pixels(datas, 32, device="cpu")
    assert ok.tolist() == [True, False, True, True]
    assert pixels.shape == (3, 3, 32, 32)
    refs = [
        clip.clip._transform(32)(Image.open(io.BytesIO(d)))
        for d, k in zip(datas, ok, strict=True)
        if k
    ]
    for got, ref in zip(pixels, refs, strict=True):
        # same recipe (bicubic short-side resize, centre crop, CLIP mean/std): close, not bit-equal
        assert (got - ref).abs().mean() < 0.1
    assert (pixels[0] - refs[1]).abs().mean() > 0.3  # and order is kept


def test_amazon_thumbnail_urls_become_full_size(server, tmp_path):
    thumb = "https://images-na.ssl-images-amazon.com/images/I/41NX%2BfobVJL._SR80,60_.jpg"
    assert (
        amazon_full_size(thumb)
        == "https://images-na.ssl-images-amazon.com/images/I/41NX%2BfobVJL.jpg"
    )
    assert amazon_full_size(
        "https://m.media-amazon.com/images/I/71a._SX300_SY300_QL70_.jpg"
    ).endswith("/71a.jpg")
    local = server.url("/a._SR80,60_.jpg")
    assert amazon_full_size(local) == local  # other hosts untouched
    f = _fetcher(tmp_path, amazon_full_size=True)
    assert f.fetch_item([local]).reason == "missing"  # the thumbnail name is fetched as given


def test_unreachable_host_is_skipped_after_limit(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = _fetcher(tmp_path, host_fail_limit=2, retries=0)
    res = [f.fetch(f"http://127.0.0.1:{port}/{i}.jpg") for i in range(4)]
    assert [r.reason for r in res] == ["error"] * 4
    assert ["skipped" in r.detail for r in res] == [False, False, True, True]
    assert f.network_fetches == 4 and not list((tmp_path / "cache").rglob("*.fail"))
