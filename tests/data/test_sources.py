"""Tests of the official URL table and the resumable download (local http.server only)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmrec.data import sources
from mmrec.data.errors import DataError
from mmrec.data.prepare import PrepareConfig, prepare_dataset
from mmrec.data.sources import download, official_urls

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD; honours Range unless ``ignore_range``; ``lie`` claims more than it sends."""

    ranges: list[str | None] = []
    ignore_range = False
    lie = False

    def do_GET(self):  # noqa: N802 (http.server API)
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng and not self.ignore_range else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        length = len(body) + (1000 if self.lie else 0)
        self.send_header("Content-Length", str(length))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        self.wfile.write(body)
        if self.lie:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"ranges": [], "ignore_range": False, "lie": False})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler, f"http://127.0.0.1:{httpd.server_address[1]}/file.json.gz"
    httpd.shutdown()
    httpd.server_close()


def test_official_urls_one_table():
    assert official_urls("amazon2014", "reviews", "Beauty") == [
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Beauty_5.json.gz"
    ]
    assert official_urls("amazon2014", "meta", "Beauty") == [
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Beauty.json.gz"
    ]
    base = "https://datarepo.eng.ucsd.edu/mcauley_group/data"
    assert official_urls("amazon2018", "reviews", "Gift_Cards") == [
        f"{base}/amazon_v2/categoryFilesSmall/Gift_Cards_5.json.gz"
    ]
    assert official_urls("amazon2018", "meta", "Gift_Cards") == [
        f"{base}/amazon_v2/metaFiles2/meta_Gift_Cards.json.gz"
    ]
    assert official_urls("amazon2023", "reviews", "All_Beauty") == [
        f"{base}/amazon_2023/raw/review_categories/All_Beauty.jsonl.gz"
    ]
    assert official_urls("amazon2023", "meta", "All_Beauty") == [
        f"{base}/amazon_2023/raw/meta_categories/meta_All_Beauty.jsonl.gz"
    ]
    assert official_urls("amazon2023", "benchmark", "All_Beauty") == [
        f"{base}/amazon_2023/benchmark/5core/last_out_w_his/All_Beauty.{s}.csv.gz"
        for s in ("train", "valid", "test")
    ]
    with pytest.raises(DataError, match="--category"):
        official_urls("amazon2018", "reviews", "../etc")
    with pytest.raises(DataError, match="no official 'benchmark' file"):
        official_urls("amazon2014", "benchmark", "Beauty")


def test_download_full(server, tmp_path):
    _, handler, url = server
    dest = download(url, tmp_path / "f.json.gz", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert handler.ranges == [None]
    assert not (tmp_path / "f.json.gz.part").exists()
    download(url, dest, progress=False)  # present: no second request
    assert handler.ranges == [None]


def test_download_resumes_part_file(server, tmp_path):
    _, handler, url = server
    (tmp_path / "f.json.gz.part").write_bytes(PAYLOAD[:30000])
    dest = download(url, tmp_path / "f.json.gz", progress=False)
    assert handler.ranges == ["bytes=30000-"]
    assert dest.read_bytes() == PAYLOAD


def test_download_restarts_when_range_ignored(server, tmp_path):
    _, handler, url = server
    handler.ignore_range = True
    (tmp_path / "f.json.gz.part").write_bytes(b"garbage" * 10)
    dest = download(url, tmp_path / "f.json.gz", progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_size_mismatch_keeps_part(server, tmp_path):
    _, handler, url = server
    handler.lie = True
    with pytest.raises(DataError, match="again to resume"):
        download(url, tmp_path / "f.json.gz", progress=False, timeout=3)
    assert not (tmp_path / "f.json.gz").exists()
    assert (tmp_path / "f.json.gz.part").stat().st_size == len(PAYLOAD)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_fast_with_where_to_put_files(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/reviews_Beauty_5.json.gz"
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        download(url, tmp_path / "reviews_Beauty_5.json.gz", progress=False)
    assert time.perf_counter() - start < 5
    assert "offline" in str(err.value) and str(tmp_path / "reviews_Beauty_5.json.gz") in str(
        err.value
    )


def test_prepare_without_local_files_downloads_official_names(tmp_path, monkeypatch):
    port = _closed_port()
    table = {
        key: tuple(u.replace("https://snap.stanford.edu", f"http://127.0.0.1:{port}") for u in urls)
        for key, urls in sources.OFFICIAL_URLS.items()
    }
    monkeypatch.setattr(sources, "OFFICIAL_URLS", table)
    cfg = PrepareConfig(
        source="amazon2014",
        category="Beauty",
        out=str(tmp_path / "out"),
        download_dir=str(tmp_path / "raw"),
    )
    start = time.perf_counter()
    with pytest.raises(DataError, match="put it at .*reviews_Beauty_5.json.gz"):
        prepare_dataset(cfg, progress=False)
    assert time.perf_counter() - start < 5
