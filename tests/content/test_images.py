"""Image fetching: every failure reason, retries, size/type/pixel checks, which URLs may be
fetched (public hosts only unless allow_local), the checksummed disk cache, the report."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
import torch

from mmrec.content.decode import MAX_PIXELS, decode_jpegs_to_pixels, jpeg_size
from mmrec.content.images import ImageFetcher, amazon_full_size, looks_like_image
from mmrec.content.outcomes import FetchReport
from mmrec.content.pixels import embed_images
from mmrec.content.urls import UrlPolicy, is_public_address
from tests.content.helpers import (
    SLOW_S,
    ImageServer,
    bomb_jpeg,
    bomb_png,
    jpeg_bytes,
    png_bytes,
)


@pytest.fixture(scope="module")
def server():
    s = ImageServer()
    yield s
    s.close()


def _fetcher(tmp_path, **kw) -> ImageFetcher:
    """A fast fetcher; allow_local by default, since the test server is on 127.0.0.1."""
    args = dict(timeout=0.5, retries=1, backoff=0.05, max_bytes=50_000, num_workers=8)
    args["allow_local"] = True
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
        "ftp://example.invalid/x.jpg": "refused",  # only http(s), even with allow_local
        server.url("/bomb.png"): "too_many_pixels",  # 100000x100000 declared in 71 bytes
        server.url("/bomb.jpg"): "too_many_pixels",
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


# ---------------------------------------------------------------- which URLs may be fetched
def _dns(table: dict[str, list[str]]):
    """A stub resolver: names from ``table``, anything else fails like an unknown name."""
    calls: list[str] = []

    def resolve(host: str) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown host {host}")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("2606:2800:220:1::1", True),
        ("127.0.0.1", False),  # loopback
        ("::1", False),
        ("10.1.2.3", False),  # RFC 1918
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("fd00::1", False),  # unique-local
        ("169.254.169.254", False),  # link-local (cloud metadata)
        ("fe80::1", False),
        ("224.0.0.1", False),  # multicast (ipaddress calls it global)
        ("ff02::1", False),
        ("240.0.0.1", False),  # reserved
        ("0.0.0.0", False),  # unspecified
        ("::", False),
        ("100.64.0.1", False),  # shared address space (CGNAT)
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:93.184.216.34", True),
        ("2002:c0a8:101::1", False),  # 6to4 of 192.168.1.1
    ],
)
def test_public_addresses(address, public):
    assert is_public_address(address) is public


def test_url_policy_checks_each_hop_on_resolved_addresses():
    dns = _dns(
        {
            "img.example.com": ["93.184.216.34"],
            "evil.example.com": ["127.0.0.1"],
            "half.example.com": ["93.184.216.34", "10.0.0.5"],  # one inside address is enough
            "meta.example.com": ["169.254.169.254"],
            "v6.example.com": ["::ffff:192.168.0.1"],
            "127.0.0.1": ["127.0.0.1"],
        }
    )
    policy = UrlPolicy(dns)
    assert policy.refusal("https://img.example.com/a.jpg") is None
    assert policy.addresses == {"img.example.com": ["93.184.216.34"]}  # what connect may use
    refused = {
        "http://evil.example.com/a.jpg": "127.0.0.1",
        "http://EVIL.example.com:8080/a.jpg": "127.0.0.1",
        "http://half.example.com/a.jpg": "10.0.0.5",
        "http://meta.example.com/latest/meta-data/": "169.254.169.254",
        "http://v6.example.com/a.jpg": "::ffff:192.168.0.1",
        "http://127.0.0.1/a.jpg": "127.0.0.1",  # IP literals go through the resolver too
        "file:///etc/passwd": "local file",
        "/etc/passwd": "local file",
        "ftp://img.example.com/a.jpg": "scheme 'ftp'",
        "http:///a.jpg": "no host",
    }
    policy = UrlPolicy(dns)
    for url, why in refused.items():
        assert why in (policy.refusal(url) or ""), url
    assert set(policy.addresses) == set()  # nothing refused is remembered for connecting
    with pytest.raises(OSError, match="unknown host"):  # DNS failure: an error, not a refusal
        policy.refusal("http://nowhere.example.com/a.jpg")
    local = UrlPolicy(dns, allow_local=True)
    assert local.refusal("http://evil.example.com/a.jpg") is None
    assert local.refusal("file:///tmp/a.png") is None
    assert local.refusal("ftp://img.example.com/a.jpg") is not None  # still http(s) only
    with pytest.raises(OSError, match="not checked"):  # a host no hop approved
        local.connect(("other.example.com", 80), 1.0)


def test_local_urls_refused_by_default_and_never_requested(server, tmp_path):
    (tmp_path / "local.png").write_bytes(png_bytes(7))
    port = server.httpd.server_address[1]
    urls = [
        server.url("/a.jpg"),  # 127.0.0.1
        f"http://localhost:{port}/b.jpg",
        f"http://[::1]:{port}/a.jpg",
        f"http://0.0.0.0:{port}/a.jpg",
        (tmp_path / "local.png").as_uri(),  # file://
        str(tmp_path / "local.png"),  # a bare path
    ]
    before = len(server.requests)
    f = _fetcher(tmp_path, allow_local=False)
    results = f.fetch_many([[u] for u in urls])
    assert [r.reason for r in results] == ["refused"] * len(urls)
    assert len(server.requests) == before  # nothing reached the server
    assert "non-public address 127.0.0.1" in results[0].detail
    assert "local file" in results[4].detail and "local file" in results[5].detail
    report = FetchReport()
    for i, r in enumerate(results):
        report.add(f"item{i}", r)
    report.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["counts"]["refused"] == len(urls) and data["counts"]["ok"] == 0
    assert {x["reason"] for x in data["failures"]} == {"refused"}
    assert "refused=6" in report.summary() and "--allow_local_images true" in report.summary()
    # a refusal depends on the settings: not cached, so allow_local fetches them later
    assert not list((tmp_path / "cache").rglob("*.fail"))
    again = _fetcher(tmp_path, allow_local=True).fetch_many([[u] for u in urls[:2] + urls[4:]])
    assert [r.reason for r in again] == ["ok"] * 4


def test_redirect_to_local_host_is_refused(server, tmp_path, monkeypatch):
    """The first hop is public (stub DNS), reached through the test server as an http proxy
    from the environment; its 302 to a host that resolves to 127.0.0.1 is not followed."""
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", server.url(""))
    dns = _dns(
        {
            "img.example.com": ["93.184.216.34"],
            "cdn.example.com": ["93.184.216.35"],
            "evil.example.com": ["127.0.0.1"],
        }
    )
    server.redirects.update(
        {
            "/to-evil.jpg": "http://evil.example.com/a.jpg",
            "/to-file.jpg": "file:///etc/passwd",
            "/to-ftp.jpg": "ftp://cdn.example.com/a.jpg",
            "/to-cdn.jpg": "http://cdn.example.com/c.png",  # public: followed
        }
    )
    f = _fetcher(tmp_path, allow_local=False, resolver=dns)
    before = len(server.requests)
    res = {p: f.fetch(f"http://img.example.com{p}") for p in server.redirects}
    assert {p: r.reason for p, r in res.items()} == {
        "/to-evil.jpg": "refused",
        "/to-file.jpg": "refused",
        "/to-ftp.jpg": "refused",
        "/to-cdn.jpg": "ok",
    }
    assert "redirect to http://evil.example.com/a.jpg" in res["/to-evil.jpg"].detail
    assert "127.0.0.1" in res["/to-evil.jpg"].detail
    assert server.requests[before:] == [
        "http://img.example.com/to-evil.jpg",
        "http://img.example.com/to-file.jpg",
        "http://img.example.com/to-ftp.jpg",
        "http://img.example.com/to-cdn.jpg",
        "http://cdn.example.com/c.png",  # the only second hop that was requested
    ]
    assert res["/to-cdn.jpg"].path.read_bytes() == png_bytes(3)


def test_connection_goes_to_the_checked_address(server, tmp_path):
    """The host is resolved once, by the policy's resolver, and the connection goes to that
    address: no second DNS answer (rebinding) can slip in. ``pinned.test`` has no real DNS."""
    port = server.httpd.server_address[1]
    dns = _dns({"pinned.test": ["127.0.0.1"]})
    f = _fetcher(tmp_path, resolver=dns)
    assert f.fetch(f"http://pinned.test:{port}/a.jpg").reason == "ok"
    assert dns.calls == ["pinned.test"]
    assert (
        _fetcher(tmp_path / "x", resolver=dns, allow_local=False)
        .fetch(f"http://pinned.test:{port}/a.jpg")
        .reason
        == "refused"
    )


# ---------------------------------------------------------------- decompression bombs
def test_pixel_limit_is_checked_before_decoding(server, tmp_path):
    assert jpeg_size(jpeg_bytes(0, (40, 48))) == (40, 48)
    assert jpeg_size(bomb_jpeg(60_000, 50_000)) == (60_000, 50_000)
    assert jpeg_size(b"\xff\xd8\xffjunk") is None
    assert len(bomb_png()) < 100 and MAX_PIXELS < 100_000 * 100_000
    f = _fetcher(tmp_path, max_pixels=40 * 48 - 1)
    r = f.fetch(server.url("/a.jpg"))  # 40x48: one pixel too many
    assert r.reason == "too_many_pixels" and "40x48" in r.detail and r.path is None
    assert list((tmp_path / "cache").rglob("*.fail"))  # permanent: cached as a failure
    assert _fetcher(tmp_path / "y", max_pixels=40 * 48).fetch(server.url("/a.jpg")).reason == "ok"


def test_decode_jpegs_skips_oversized_headers():
    datas = [jpeg_bytes(0, (40, 40)), bomb_jpeg(), jpeg_bytes(1, (64, 40))]
    pixels, ok = decode_jpegs_to_pixels(datas, 16, device="cpu")
    assert ok.tolist() == [True, False, True] and pixels.shape == (2, 3, 16, 16)
    pixels, ok = decode_jpegs_to_pixels(datas, 16, device="cpu", max_pixels=2000)
    assert ok.tolist() == [True, False, False] and pixels.shape == (1, 3, 16, 16)


class _MeanColour:
    """An ``ImageContentModel`` without weights: the mean of each colour channel."""

    image_resolution = 8
    feature_dim = 3
    device = torch.device("cpu")

    def preprocess(self, image):
        from torchvision.transforms.v2 import functional as F

        x = F.pil_to_tensor(image.resize((8, 8))).float() / 255.0
        return (x - 0.5) / 0.5  # [3, 8, 8]

    def encode_images(self, pixels):
        return pixels.mean(dim=(2, 3))  # [B, 3]


@pytest.mark.parametrize("gpu_decode", [False, True])
def test_embed_images_counts_too_many_pixels(server, tmp_path, gpu_decode):
    f = _fetcher(tmp_path, verify_decode=False, max_pixels=40 * 48)
    urls = [[server.url(p)] for p in ("/a.jpg", "/bomb.jpg", "/bomb.png", "/big.png", "/c.png")]
    f.max_bytes = 10**6  # /big.png (300x300) is within the bytes, over the pixels
    feats, present, counts, failures = embed_images(_MeanColour(), f, urls, 2, gpu_decode)
    assert present.tolist() == [True, False, False, False, True]
    assert feats.shape == (5, 3) and (feats[~present] == 0).all()
    assert counts == {"ok": 2, "too_many_pixels": 3}
    assert [x["row"] for x in failures] == [1, 2, 3]
    assert "300x300" in failures[2]["detail"]


# ---------------------------------------------------------------- cache integrity
def test_cached_file_changed_on_disk_is_fetched_again(server, tmp_path):
    f = _fetcher(tmp_path)
    url = server.url("/b.jpg")
    path = f.fetch(url).path
    assert path.with_suffix(".sha256").read_text() == hashlib.sha256(jpeg_bytes(2)).hexdigest()
    hits = server.hits["/b.jpg"]
    for damage in (jpeg_bytes(99), jpeg_bytes(2)[:100], b"<html>"):  # replaced, cut, junk
        path.write_bytes(damage)
        g = _fetcher(tmp_path)
        r = g.fetch(url)
        assert r.reason == "ok" and r.path.read_bytes() == jpeg_bytes(2)
        assert g.cache_mismatches == 1 and g.network_fetches == 1
    assert server.hits["/b.jpg"] == hits + 3
    g = _fetcher(tmp_path)
    assert g.fetch(url).reason == "ok" and g.network_fetches == 0  # intact: no request


def test_cache_without_checksum_and_broken_failure_records(server, tmp_path):
    f = _fetcher(tmp_path)
    ok_url, bad_url = server.url("/a.jpg"), server.url("/page.html")
    path = f.fetch(ok_url).path
    assert f.fetch(bad_url).reason == "not_image"
    # a cache written before checksums: an image signature is kept (and its checksum recorded)
    path.with_suffix(".sha256").unlink()
    g = _fetcher(tmp_path)
    assert g.fetch(ok_url).reason == "ok" and g.network_fetches == 0
    assert path.with_suffix(".sha256").exists()
    # ... anything else is fetched again
    path.with_suffix(".sha256").unlink()
    path.write_bytes(b"<html>not an image</html>")
    assert g.fetch(ok_url).reason == "ok" and g.network_fetches == 1
    assert path.read_bytes() == jpeg_bytes(1)
    # an unreadable failure record is asked again, not a crash
    fail = next((tmp_path / "cache").rglob("*.fail"))
    fail.write_text("{not json")
    assert g.fetch(bad_url).reason == "not_image" and g.network_fetches == 2
