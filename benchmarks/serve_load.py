"""Load test of `mmrec serve`: throughput and latency at several concurrencies, batching on and
off, ONNX Runtime against PyTorch, memory after 1,000 and 10,000 requests, and the rate of
`mmrec recommend` called once per user; loopback only, a bounded asyncio client, stops by itself.

    .venv/bin/python -m benchmarks.serve_load \\
        --model runs/exports/quickstart --name "quickstart (Gift Cards 2018)" \\
        --model runs/exports/beauty2014_time --name "Beauty 2014 ID + time" \\
        --out benchmarks/results/serve.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import REPO, append_section, cpu_name

DAY = 86_400


def requests_for(folder: Path, count: int, seed: int = 0) -> list[bytes]:
    """``count`` request bodies: half a known user at the day after their last event, half an
    anonymous history of 1-10 catalogue items on the data's last days (k = 10)."""
    rng = np.random.default_rng(seed)
    users = pl.read_parquet(folder / "users.parquet")
    items = pl.read_parquet(folder / "items.parquet")["item_id"].to_list()
    events = pl.read_parquet(folder / "events.parquet", columns=["user_idx", "timestamps"])
    last = events.group_by("user_idx").agg(pl.col("timestamps").max()).sort("user_idx")
    end = int(events["timestamps"].max())
    ids = dict(zip(users["user_idx"].to_list(), users["user_id"].to_list(), strict=True))

    def day(ts: int) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(ts - ts % DAY))

    bodies = []
    for i in range(count):
        if i % 2 == 0:
            row = last.row(int(rng.integers(last.height)))
            body = {"user": ids[row[0]], "at": day(row[1] + DAY)}
        else:
            n = int(rng.integers(1, 11))
            hist = [{"asin": items[j], "time": day(end - int(rng.integers(0, 30)) * DAY)}
                    for j in rng.choice(len(items), n, replace=False)]  # fmt: skip
            body = {"history": hist, "at": day(end + DAY)}
        bodies.append(json.dumps(body | {"k": 10}).encode())
    return bodies


@dataclass
class Result:
    requests: int
    failed: int
    seconds: float
    latencies_ms: list[float]

    def row(self) -> list[str]:
        p50, p95, p99 = np.percentile(self.latencies_ms, [50, 95, 99])
        rate = self.requests / self.seconds
        return [f"{rate:,.0f}", f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", f"{self.failed}"]


async def _one(reader, writer, body: bytes) -> tuple[int, bytes]:
    head = (
        b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    writer.write(head + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def load(port: int, bodies: list[bytes], concurrency: int, total: int, limit_s: float):
    """``total`` requests (or as many as fit in ``limit_s``) from ``concurrency`` keep-alive
    connections, each sending its next request when the previous one is answered."""
    next_index, latencies, failed = 0, [], 0
    stop = time.perf_counter() + limit_s

    async def worker() -> None:
        nonlocal next_index, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_index < total and time.perf_counter() < stop:
                body = bodies[next_index % len(bodies)]
                next_index += 1
                t = time.perf_counter()
                try:
                    status, answer = await _one(reader, writer, body)
                    ok = status == 200 and b'"items"' in answer
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append((time.perf_counter() - t) * 1000)
                failed += not ok
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(len(latencies), failed, time.perf_counter() - started, latencies)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _get(port: int, path: str) -> dict:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """``mmrec serve`` in a subprocess on a free loopback port."""

    def __init__(self, folder: Path, runtime: str, batch: int, threads: int) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "mmrec.cli", "serve", "--model", str(folder),
               "--port", str(self.port), "--runtime", runtime, "--threads", str(threads),
               "--max_batch_size", str(batch)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} exited with {self.proc.returncode}")
            try:
                self.health()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("mmrec serve did not answer in 180 s") from None
                time.sleep(0.5)

    def health(self) -> dict:
        return _get(self.port, "/health")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def recommend_rate(ckpt: str, users: list[str], at: str) -> float:
    """Recommendations per second of `mmrec recommend` called once per user (a process each)."""
    started = time.perf_counter()
    for user in users:
        cmd = [sys.executable, "-m", "mmrec.cli", "recommend", "--ckpt_path", ckpt,
               "--user", user, "--at", at, "--json"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return len(users) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="export folder (repeatable)")
    p.add_argument("--name", action="append", required=True, help="its name in the table")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=3000, help="per cell (at most)")
    p.add_argument("--seconds", type=float, default=12.0, help="per cell (at most)")
    p.add_argument("--threads", type=int, default=1, help="inference threads of the server")
    p.add_argument("--runtimes", nargs="+", default=["onnx", "torch"])
    p.add_argument("--leak_model", type=int, default=-1, help="index of --model for the leak run")
    p.add_argument("--recommend_users", type=int, default=3)
    p.add_argument("--note", action="append", default=[], help="a line under the table")
    p.add_argument("--out", default="benchmarks/results/serve.md")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    rows, notes = [], []
    for folder, name in zip(map(Path, args.model), args.name, strict=True):
        bodies = requests_for(folder, 2000)
        for runtime in args.runtimes:
            for batch in (64, 1):
                server = Serve(folder, runtime, batch, args.threads)
                try:
                    for c in (8, 32):  # warm-up
                        asyncio.run(load(server.port, bodies, c, 200, 30))
                    for c in args.concurrency:
                        before = server.health()["batching"]
                        res = asyncio.run(load(server.port, bodies, c, args.requests, args.seconds))
                        after = server.health()["batching"]
                        per_batch = (after["requests"] - before["requests"]) / max(
                            1, after["batches"] - before["batches"]
                        )  # this cell's requests per forward pass
                        batching = "on" if batch > 1 else "off"
                        rows.append([name, runtime, batching, str(c), *res.row(),
                                     str(res.requests), f"{per_batch:.1f}"])  # fmt: skip
                        print(" | ".join(rows[-1]), flush=True)
                finally:
                    server.stop()
    folder, name = Path(args.model[args.leak_model]), args.name[args.leak_model]
    server = Serve(folder, "onnx", 64, args.threads)
    try:
        asyncio.run(load(server.port, requests_for(folder, 2000, seed=2), 32, 2000, 600))
        bodies = requests_for(folder, 20_000, seed=1)
        memory, failed, done = {}, 0, 0
        for upto in (1000, 10_000, 20_000):
            res = asyncio.run(load(server.port, bodies[done:upto], 32, upto - done, 600))
            failed += res.failed
            done = upto
            memory[upto] = server.health()["memory_mb"]
        notes.append(
            f"Memory ({name}, ONNX Runtime, batching on, concurrency 32, resident set of the "
            f"server, counted after 2,000 warm-up requests): {memory[1000]:.1f} MB after 1,000 "
            f"requests, {memory[10_000]:.1f} MB after "
            f"10,000 ({memory[10_000] - memory[1000]:+.1f} MB), {memory[20_000]:.1f} MB after "
            f"20,000 ({memory[20_000] - memory[10_000]:+.1f} MB); {failed} failed."
        )
    finally:
        server.stop()
    m = json.loads((folder / "manifest.json").read_text())
    users = pl.read_parquet(folder / "users.parquet")["user_id"].to_list()[: args.recommend_users]
    end = m["dataset"]["time_range"][1] + DAY
    rate = recommend_rate(
        m["checkpoint"]["path"], users, time.strftime("%Y-%m-%d", time.gmtime(end))
    )
    top = max(args.concurrency)
    served = [float(r[4].replace(",", "")) for r in rows
              if r[:4] == [name, "onnx", "on", str(top)]]  # fmt: skip
    notes.append(
        f"`mmrec recommend` once per user ({name}, {len(users)} users, a process each): "
        f"{rate:.2f} recommendations/s; the server (ONNX Runtime, batching on, concurrency "
        f"{top}) answers {served[0] / rate:,.0f}x as many."
    )
    load_after = os.getloadavg()
    table = [
        "| model | runtime | batching | concurrency | recommendations/s | p50 ms | p95 ms | "
        "p99 ms | failed | requests | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    header = "# Serving load test (`mmrec serve`)\n"
    text = "\n".join([
        f"\n## {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC\n",
        "Command: `.venv/bin/python -m benchmarks.serve_load " + " ".join(
            f'--model {m} --name "{n}"' for m, n in zip(args.model, args.name, strict=True)
        ) + f" --threads {args.threads}`  ",
        f"Hardware: {cpu_name()}, {os.cpu_count()} logical cores, shared: load average "
        f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} (1 / 5 / 15 min) "
        f"before, {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} after.  ",
        f"Server: `mmrec serve --threads {args.threads}` (batching on = `--max_batch_size 64` "
        "(`--batch_wait_ms 0`, the default), off = `--max_batch_size 1`), a fresh process "
        "per runtime and batching setting, 400 warm-up requests (concurrency 8 and 32); "
        f"onnxruntime {_version('onnxruntime')}, torch {_version('torch')}, fastapi "
        f"{_version('fastapi')}, uvicorn {_version('uvicorn')}. Client: this script, "
        "asyncio keep-alive connections on loopback, each sending its next request when the "
        f"last is answered; per cell at most {args.requests:,} requests or {args.seconds:.0f} s. "
        "Requests: half a known user at the day after their last event, half an anonymous "
        "history of 1-10 items; k = 10. Mean batch: the cell's requests per forward pass.\n",
        *table,
        "",
        *(f"- {line}" for line in [*notes, *args.note]),
    ])  # fmt: skip
    append_section(REPO / args.out, header, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
