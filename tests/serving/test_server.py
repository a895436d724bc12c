"""`mmrec serve`: answers over HTTP equal the served model's, bad requests get a 4xx and one
line (the server answers after each), concurrent requests are batched, PyTorch agrees."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvicorn

from mmrec.serving.bundle import ServedModel
from mmrec.serving.requests import Limits, iso, parse
from mmrec.serving.server import ServeConfig, create_app, load_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server in a thread of this process, on a free loopback port."""

    def __init__(self, model, limits: Limits | None = None, **batching) -> None:
        self.app = create_app(model, limits, **batching)
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def call(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    """``(status, JSON answer)`` of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def post(port: int, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(port, "POST", "/recommend", data, {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def served(quick):
    return ServedModel(quick["folder"])


@pytest.fixture(scope="module")
def server(served):
    srv = Server(served, Limits(max_history=50), max_wait_ms=20)
    yield srv
    srv.stop()


def test_answers_equal_the_served_model(server, served):
    user = next(iter(served.users))
    body = {"user": user, "at": "2014-06-01", "k": 5}
    status, answer = post(server.port, body)
    assert status == 200 and answer["at"] == "2014-06-01"
    want = served.recommend([parse(json.dumps(body).encode(), served, Limits())])[0]
    assert [(i["asin"], i["score"]) for i in answer["items"]] == want
    history = [{"asin": served.item_ids[3], "time": "2013-02-01"}, {"asin": "NOT_AN_ASIN"}]
    status, answer = post(server.port, {"history": history, "at": "2013-03-01"})
    assert status == 200 and len(answer["items"]) == 10
    assert answer["unknown_asins"] == ["NOT_AN_ASIN"]
    assert served.item_ids[3] not in {i["asin"] for i in answer["items"]}  # history excluded
    status, answer = post(server.port, {"user": user})  # no at: the day after the data
    last = served.time_range[1]
    assert status == 200 and answer["at"] == iso(last - last % 86_400 + 86_400, "day")


def _history(served, n: int) -> list[dict]:
    return [{"asin": served.item_ids[1 + i % 100], "time": "2013-01-01"} for i in range(n)]


BAD = [
    (b"{not json", 400, "malformed JSON"),
    (b"\xff\xfe\x00", 400, "malformed JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({"history": [{"asin": "NOPE1"}, {"asin": "NOPE2"}]}, 422, "no history item is in the catal"),
    ("LONG", 413, "over the limit"),
    ("LONG_SMALL", 413, "at most 50 are accepted"),
    ({"user": "U", "k": 0}, 422, "k must be within 1..147"),
    ({"user": "U", "k": 148}, 422, "k must be within 1..147"),
    ({"user": "U", "k": "10"}, 422, "k must be an integer"),
    ({"user": "U", "k": 2.5}, 422, "k must be an integer"),
    ({"user": "U", "at": "1999-01-01"}, 422, "outside the data's time range"),
    ({"user": "U", "at": "2031-01-01"}, 422, "outside the data's time range"),
    ({"user": "U", "at": "2014-02-30"}, 422, "not an ISO date"),
    ({"user": "U", "at": 1400000000}, 422, "at must be a date string"),
    ({"user": "nobody-at-all"}, 404, "unknown user"),
    ({}, 422, "give a user and/or a history"),
    ({"user": 7}, 422, "user must be a string"),
    ({"user": "U", "kk": 3}, 422, "unknown field 'kk'"),
    ({"history": "S000000001"}, 422, "history must be a list"),
    ({"history": ["S000000001"]}, 422, "history[0] must be an object"),
    ({"history": [{"asin": 5}]}, 422, "history[0].asin must be a string"),
    ({"history": [{"asin": "S000000001", "time": "2014-03-01"}], "at": "2014-01-01"}, 422,
     "history[0].time 2014-03-01 is outside"),
    ({"history": [{"asin": "S000000001", "rating": "five"}]}, 422, "rating must be a number"),
    ({"history": [{"asin": "S000000001", "colour": "red"}]}, 422, "unknown field 'colour'"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_request_gets_a_4xx_and_one_line_then_the_server_answers(
    server, served, body, status, message
):
    user = next(iter(served.users))
    if body == "LONG":  # the 100,000-event history
        body = {"history": _history(served, 100_000)}
    elif body == "LONG_SMALL":
        body = {"history": _history(served, 51)}
    elif isinstance(body, dict) and body.get("user") == "U":
        body = body | {"user": user}
    got, answer = post(server.port, body)
    assert got == status, answer
    assert set(answer) == {"error"} and message in answer["error"]
    assert "\n" not in answer["error"] and len(answer["error"]) < 300
    assert call(server.port, "GET", "/health")[0] == 200
    assert post(server.port, {"user": user, "k": 3})[0] == 200


def test_other_routes_and_methods_answer_json(server):
    assert call(server.port, "GET", "/nope") == (404, {"error": "Not Found"})
    status, answer = call(server.port, "GET", "/recommend")
    assert status == 405 and "error" in answer
    status, answer = call(server.port, "GET", "/health")
    assert answer["status"] == "ok" and answer["items"] == 147 and answer["dynamics"]


def test_concurrent_requests_are_batched_and_answered_right(server, served):
    users = list(served.users)[:48]
    bodies = [{"user": u, "at": f"2014-12-1{i % 9}", "k": 1 + i % 10} for i, u in enumerate(users)]
    want = [served.recommend([parse(json.dumps(b).encode(), served, Limits())])[0] for b in bodies]
    before = server.app.state.batcher.stats()
    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda b: post(server.port, b), bodies))
    for (status, answer), w in zip(answers, want, strict=True):
        assert status == 200
        got = [(i["asin"], i["score"]) for i in answer["items"]]
        assert [a for a, _ in got] == [a for a, _ in w]
        assert all(abs(s - t) < 1e-5 for (_, s), (_, t) in zip(got, w, strict=True))
    after = server.app.state.batcher.stats()
    assert after["requests"] - before["requests"] == 48
    assert after["batches"] - before["batches"] < 48 and after["largest_batch"] > 1


def test_batching_off_runs_one_request_at_a_time(served):
    srv = Server(served, max_batch_size=1)
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda u: post(srv.port, {"user": u})[0], list(served.users)[:16])
            )
        assert codes == [200] * 16
        assert srv.app.state.batcher.stats()["largest_batch"] == 1
    finally:
        srv.stop()


def test_torch_runtime_gives_the_onnx_answers(quick, served):
    torch_model = load_model(ServeConfig(model=str(quick["folder"]), runtime="torch"))
    bodies = [{"user": u, "at": "2014-12-20"} for u in list(served.users)[:20]]
    queries = [parse(json.dumps(b).encode(), served, Limits()) for b in bodies]
    for got, want in zip(torch_model.recommend(queries), served.recommend(queries), strict=True):
        assert [a for a, _ in got] == [a for a, _ in want]
        assert max(abs(s - t) for (_, s), (_, t) in zip(got, want, strict=True)) < 1e-4


@pytest.mark.slow
def test_mmrec_serve_command(quick):
    """`mmrec serve` as a user starts it: a process, a port, /health, a request, a stop."""
    port = free_port()
    cmd = [sys.executable, "-m", "mmrec.cli", "serve", "--model", str(quick["folder"]),
           "--port", str(port)]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if call(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "mmrec serve did not answer"
                time.sleep(0.5)
        status, answer = post(port, {"history": [{"asin": "S000000002"}], "k": 2})
        assert status == 200 and len(answer["items"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)
