"""Tests of the official URL table and the resumable download (local http.server only)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmrec.ingest import sources
from mmrec.ingest.errors import DataError
from mmrec.ingest.prepare import PrepareConfig, prepare_dataset
from mmrec.ingest.sources import download, official_urls

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD; honours Range unless ``ignore_range`` (and only when ``If-Range``, if
    sent, equals ``etag``); ``lie`` claims more than it sends; ``etag`` None sends none;
    ``no_length`` sends no Content-Length (the body ends when the connection closes)."""

    ranges: list[str | None] = []
    if_ranges: list[str | None] = []
    ignore_range = False
    lie = False
    etag: str | None = '"v1"'
    no_length = False

    def do_GET(self):  # noqa: N802 (http.server API)
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        type(self).ranges.append(rng)
        type(self).if_ranges.append(if_range)
        honour = rng and not self.ignore_range and (if_range is None or if_range == self.etag)
        start = int(rng.split("=")[1].split("-")[0]) if honour else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        length = len(body) + (1000 if self.lie else 0)
        if not self.no_length:
            self.send_header("Content-Length", str(length))
        if self.etag is not None:
            self.send_header("ETag", self.etag)
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
    attrs = {"ranges": [], "if_ranges": [], "ignore_range": False, "lie": False}
    handler = type("H", (_Handler,), attrs)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler, f"http://127.0.0.1:{httpd.server_address[1]}/file.json.gz"
    httpd.shutdown()
    httpd.server_close()


def _partial(tmp_path, url: str, nbytes: int, validator: str | None = '"v1"') -> None:
    """An interrupted download: ``f.json.gz.part`` and, unless None, its stored validator."""
    (tmp_path / "f.json.gz.part").write_bytes(PAYLOAD[:nbytes])
    if validator is not None:
        meta = {"url": url, "validator": validator}
        (tmp_path / "f.json.gz.part.json").write_text(json.dumps(meta))


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
    logs: list[str] = []
    dest = download(url, tmp_path / "f.json.gz", progress=False, log=logs.append)
    assert dest.read_bytes() == PAYLOAD
    assert handler.ranges == [None]
    assert not (tmp_path / "f.json.gz.part").exists()
    assert not (tmp_path / "f.json.gz.part.json").exists()  # the validator goes with the .part
    download(url, dest, progress=False)  # present: no second request
    assert handler.ranges == [None]
    assert logs == []  # size checked, nothing to say


def test_download_resumes_part_file_with_same_etag(server, tmp_path):
    _, handler, url = server
    _partial(tmp_path, url, 30000)
    logs: list[str] = []
    dest = download(url, tmp_path / "f.json.gz", progress=False, log=logs.append)
    assert handler.ranges == ["bytes=30000-"] and handler.if_ranges == ['"v1"']
    assert dest.read_bytes() == PAYLOAD and logs == []
    assert not (tmp_path / "f.json.gz.part.json").exists()


def test_download_restarts_when_etag_changed(server, tmp_path):
    _, handler, url = server
    handler.etag = '"v2"'  # the file on the server is not the one the .part began
    _partial(tmp_path, url, 30000)
    (tmp_path / "f.json.gz.part").write_bytes(b"old!" * 7500)  # 30000 bytes of the old file
    logs: list[str] = []
    dest = download(url, tmp_path / "f.json.gz", progress=False, log=logs.append)
    assert handler.ranges == ["bytes=30000-"] and handler.if_ranges == ['"v1"']
    assert dest.read_bytes() == PAYLOAD  # from byte 0, the old bytes dropped
    assert any("changed" in line and "starting over" in line for line in logs), logs


def test_download_restarts_when_range_answer_has_other_etag(server, tmp_path):
    """A server that ignores If-Range but honours Range: the 206's ETag gives it away."""
    _, handler, url = server
    _partial(tmp_path, url, 30000, validator='"v0"')  # the server now has "v1"
    real = _Handler.do_GET

    def ignore_if_range(self):
        del self.headers["If-Range"]
        real(self)

    handler.do_GET = ignore_if_range
    logs: list[str] = []
    dest = download(url, tmp_path / "f.json.gz", progress=False, log=logs.append)
    assert handler.ranges == ["bytes=30000-", None]  # the 206 of "v1" was dropped: from 0
    assert dest.read_bytes() == PAYLOAD
    assert any("validator" in line and "over" in line for line in logs), logs


def test_download_without_stored_validator_restarts(server, tmp_path):
    _, handler, url = server
    _partial(tmp_path, url, 30000, validator=None)
    (tmp_path / "f.json.gz.part").write_bytes(b"garbage" * 10)
    logs: list[str] = []
    dest = download(url, tmp_path / "f.json.gz", progress=False, log=logs.append)
    assert handler.ranges == [None]  # no Range asked: nothing appended to unknown bytes
    assert dest.read_bytes() == PAYLOAD
    assert any("unknown origin" in line and "f.json.gz.part" in line for line in logs), logs
    # a validator stored for another URL counts as none
    dest.unlink()
    _partial(tmp_path, url + "?other", 30000)
    download(url, dest, progress=False, log=logs.append)
    assert handler.ranges == [None, None] and dest.read_bytes() == PAYLOAD


def test_download_restarts_when_range_ignored(server, tmp_path):
    _, handler, url = server
    handler.ignore_range = True
    _partial(tmp_path, url, 30000)
    (tmp_path / "f.json.gz.part").write_bytes(b"garbage" * 10)
    dest = download(url, tmp_path / "f.json.gz", progress=False, log=lambda m: None)
    assert dest.read_bytes() == PAYLOAD


def test_download_complete_part_is_finished_on_416(server, tmp_path):
    _, handler, url = server
    _partial(tmp_path, url, len(PAYLOAD))
    real = _Handler.do_GET

    def range_not_satisfiable(self):
        if self.headers.get("Range"):
            type(self).ranges.append(self.headers.get("Range"))
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        real(self)

    handler.do_GET = range_not_satisfiable
    dest = download(url, tmp_path / "f.json.gz", progress=False)
    assert handler.ranges == [f"bytes={len(PAYLOAD)}-"] and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.json.gz.part.json").exists()


def test_download_without_content_length_is_reported(server, tmp_path):
    _, handler, url = server
    handler.no_length = True
    logs: list[str] = []
    dest = download(url, tmp_path / "f.json.gz", progress=False, log=logs.append)
    assert dest.read_bytes() == PAYLOAD
    assert len(logs) == 1 and "no Content-Length" in logs[0] and "f.json.gz" in logs[0]


def test_download_size_mismatch_keeps_part(server, tmp_path):
    _, handler, url = server
    handler.lie = True
    with pytest.raises(DataError, match="again to resume"):
        download(url, tmp_path / "f.json.gz", progress=False, timeout=3)
    assert not (tmp_path / "f.json.gz").exists()
    assert (tmp_path / "f.json.gz.part").stat().st_size == len(PAYLOAD)
    stored = json.loads((tmp_path / "f.json.gz.part.json").read_text())
    assert stored == {"url": url, "validator": '"v1"'}  # kept for the resume


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
