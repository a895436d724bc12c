"""`mmrec serve`: an exported model over HTTP (FastAPI + uvicorn), concurrent requests batched
into one forward pass; `POST /recommend`, `GET /health`; every bad request a 4xx, one line."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from mmrec.serving.requests import Limits, RequestError, iso, parse


class Batcher:
    """Dynamic batching of concurrent requests: waiting items go to ``fn`` together.

    One worker takes the first waiting item, lets the event loop run twice (requests whose
    bytes have arrived are read and join), then waits ``max_wait_ms`` for more (at most
    ``max_batch_size`` in all), and runs ``fn(items) -> results`` on one inference thread
    while the event loop keeps reading requests (which become the next batch). If a batch
    fails, its items are run one by one, so one item fails alone.

    Args:
        fn: ``list of items -> list of results`` (same order).
        max_batch_size: Most items in one call (1: no batching).
        max_wait_ms: How long a batch waits for more items after its first (0: only those
            already read join).
        max_queue: Most items waiting; more are refused (503) instead of queueing without end.
    """

    def __init__(
        self,
        fn: Callable[[list], list],
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        max_queue: int = 4096,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.fn, self.max_batch_size = fn, max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.requests = self.batches = self.largest = 0
        self.slowest = 0.0  # seconds of the slowest batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mmrec-infer")

    def start(self) -> None:
        """Start the worker (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False)

    async def submit(self, item: Any) -> Any:
        """``fn([item, ...])``'s result for ``item`` once its batch has run."""
        if self._queue.qsize() >= self.max_queue:
            raise RequestError(503, f"server busy: {self.max_queue} requests waiting")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    def _drain(self, batch: list) -> None:
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            for _ in range(2):  # requests already read by the event loop join at no wait
                await asyncio.sleep(0)
                self._drain(batch)
            if len(batch) < self.max_batch_size and self.max_wait > 0:
                await asyncio.sleep(self.max_wait)
                self._drain(batch)
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # client gone
            if not batch:
                continue
            self.requests += len(batch)
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            results = await loop.run_in_executor(self._pool, self._run, [i for i, _ in batch])
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    (fut.set_exception if isinstance(res, Exception) else fut.set_result)(res)

    def _run(self, items: list) -> list:
        started = time.perf_counter()
        try:
            return list(self.fn(items))
        except Exception as err:  # noqa: BLE001 - each item's error goes back to its request
            if len(items) == 1:
                return [err]
            return [self._run([item])[0] for item in items]
        finally:
            self.slowest = max(self.slowest, time.perf_counter() - started)

    def stats(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "largest_batch": self.largest,
            "mean_batch": round(self.requests / max(1, self.batches), 2),
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait * 1000,
            "slowest_batch_ms": round(self.slowest * 1000, 1),
        }


def _memory_mb() -> float | None:
    """Resident memory of this process in MB (Linux ``/proc``; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    import os

    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def create_app(model, limits: Limits | None = None, batcher: Batcher | None = None, **batching):
    """The FastAPI app serving ``model`` (a :class:`~mmrec.serving.bundle.ServedModel`).

    Args:
        model: The loaded export folder.
        limits: What a request may ask for.
        batcher: The batcher (default: one over ``model.recommend`` with ``batching``).
        **batching: :class:`Batcher` options.
    """
    limits = limits or Limits()
    batcher = batcher or Batcher(model.recommend, **batching)
    max_body = 256 * limits.max_history + 65536  # bytes: a generous event each

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())[:500]}, status_code=status)

    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="mmrec", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.model = batcher, model

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404 route, 405 method...
        return error(exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return error(422, str(exc))

    @app.exception_handler(Exception)
    async def failed(request, exc: Exception):  # a bug: 500 with one line, the server goes on
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "items": model.num_items,
            "users": len(model.users),
            "dynamics": model.dynamics is not None,
            "time_range": [iso(t, model.granularity) for t in model.time_range],
            "batching": batcher.stats(),
            "memory_mb": _memory_mb(),
        }

    @app.post("/recommend")
    async def recommend(request: Request):
        body, size = bytearray(), 0
        async for chunk in request.stream():  # read to the end, so the client gets the answer
            size += len(chunk)
            if size <= max_body:
                body += chunk
        if size > max_body:
            return error(
                413,
                f"request body of {size} bytes is over the limit of {max_body} bytes "
                f"(--max_history {limits.max_history} events)",
            )
        try:
            query = parse(body, model, limits)
            items = await batcher.submit(query)
        except RequestError as err:
            return error(err.status, err.message)
        out = {
            "items": [{"asin": a, "score": s} for a, s in items],
            "at": iso(query.at, model.granularity),
        }
        if query.unknown:
            out["unknown_asins"] = query.unknown
        return Response(json.dumps(out), media_type="application/json")

    return app


@dataclass
class ServeConfig:
    """Settings of ``mmrec serve``: an exported model (``mmrec export``) over HTTP.

    ``POST /recommend`` takes ``{"user": "<reviewer id>", "history": [{"asin": "...", "time":
    "YYYY-MM-DD"}, ...], "at": "YYYY-MM-DD", "k": 10}`` (user and/or history; at, k, time and
    an event's "rating" optional) and answers ``{"items": [{"asin": "...", "score": ...}, ...],
    "at": "..."}``; ``GET /health`` answers ``{"status": "ok", ...}``. Bad requests get a 4xx
    ``{"error": "<one line>"}``.

    Args:
        model: Folder written by ``mmrec export``.
        host: Address to listen on (default: loopback only).
        port: TCP port.
        runtime: What computes user vectors: ``onnx`` (ONNX Runtime, the exported graph) or
            ``torch`` (PyTorch, the checkpoint named in the manifest or ``ckpt_path``).
        ckpt_path: Checkpoint for ``runtime torch`` (default: the manifest's).
        threads: CPU threads of inference (ONNX Runtime's intra-op threads, torch's threads).
        max_batch_size: Most concurrent requests batched into one forward pass (1: no batching).
        batch_wait_ms: How long a batch waits for more requests after its first (0: no wait;
            requests the server has already read still join it).
        max_queue: Most requests waiting for inference; more get 503.
        max_history: Most events in a request's history (413 above).
        max_days_after: How many days after the data's last event ``at`` may lie (422 beyond;
            the event log and the time encoders end with the data). A request without ``at``
            is answered for now when inside the range, else for the day after the last event.
        trust_module: Packages outside mmrec the model's dynamics may be imported from.
        log_level: uvicorn's log level (``info`` shows each request).
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    runtime: Literal["onnx", "torch"] = "onnx"
    ckpt_path: str | None = None
    threads: int = 1
    max_batch_size: int = 64
    batch_wait_ms: float = 0.0
    max_queue: int = 4096
    max_history: int = 1000
    max_days_after: float = 7.0
    trust_module: list[str] | None = None
    log_level: str = "warning"


def load_model(cfg: ServeConfig):
    """The :class:`~mmrec.serving.bundle.ServedModel` of ``cfg`` with its runtime."""
    import torch

    from mmrec.serving.bundle import ServedModel

    torch.set_num_threads(max(1, cfg.threads))
    trusted = list(cfg.trust_module or [])
    if cfg.runtime == "onnx":
        return ServedModel(cfg.model, threads=cfg.threads, trusted_modules=trusted)
    served = ServedModel(cfg.model, tower=lambda batch: None, trusted_modules=trusted)
    served.tower = torch_tower(served, cfg.ckpt_path, trusted)
    return served


def torch_tower(served, ckpt_path: str | None, trusted: Sequence[str] = ()):
    """A :class:`~mmrec.serving.onnx_model.TorchTower` of the checkpoint the folder was
    exported from (or ``ckpt_path``), with the folder's inputs and item vectors."""
    from mmrec.module import MMRecModule
    from mmrec.serving.onnx_model import TorchTower, UserTower

    m = served.manifest
    path = ckpt_path or m["checkpoint"].get("path")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path!r} for --runtime torch not found: --ckpt_path")
    kw = {"trusted_modules": list(trusted)} if trusted else {}
    model = MMRecModule.load_from_checkpoint(
        path, map_location="cpu", data_dir=m["dataset"]["data_dir"], **kw
    )
    inputs = [i["name"] for i in m["onnx"]["inputs"]]
    return TorchTower(UserTower(model, inputs, served.item_vecs))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mmrec serve``; returns the exit status."""
    import uvicorn

    from mmrec.parsing import dataclass_parser, exit_status, parse_settings

    parser = dataclass_parser(ServeConfig, "mmrec serve", "Serve an exported model over HTTP.")
    cfg = parse_settings(ServeConfig, parser, sys.argv[1:] if argv is None else argv)

    def run() -> None:
        started = time.perf_counter()
        model = load_model(cfg)
        model.warm_up()
        limits = Limits(cfg.max_history, cfg.max_days_after)
        app = create_app(
            model,
            limits,
            max_batch_size=cfg.max_batch_size,
            max_wait_ms=cfg.batch_wait_ms,
            max_queue=cfg.max_queue,
        )
        gc.freeze()  # the loaded libraries and model: never scanned by collections (no pauses)
        print(
            f"mmrec serve: {cfg.model} ({cfg.runtime}, {model.num_items} items, loaded in "
            f"{time.perf_counter() - started:.1f} s) on http://{cfg.host}:{cfg.port}",
            flush=True,
        )
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False)

    return exit_status("mmrec serve", run)


if __name__ == "__main__":
    sys.exit(main())
