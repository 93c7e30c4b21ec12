"""`RunnerReplica`: one runner server (its own loader, engines and prompt cache) as a Ray Serve
replica. Its HTTP API is runner's own FastAPI app (`create_app`), installed with
`serve.ingress` so Ray runs the app's lifespan (preload, drain, shutdown); the front door
forwards each request to `handle_http`, which drives that app in-process and streams the ASGI
response back. `record_routing_stats` publishes the replica's cache summary and `ps` rows.

Each replica keeps its prompt cache in `<cache dir>/replica-<k>`, taking the first `k` whose
lock file it can lock: a replica that crashed releases its lock with its process, so the one
Ray starts in its place on the same host finds the same disk cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

from runner.api.app import create_app
from runner.cache.radix import RadixIndex
from runner.config import Settings

from .forward import ForwardedRequest

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-runner-replica"
# Cap on advertised prefixes: beyond it a summary is truncated (routing degrades to load).
MAX_BLOCKS = 50_000


def claim_cache_dir(root: Path, limit: int = 256) -> tuple[Path, int]:
    """The first `root/replica-<k>` whose lock this process can take; returns (dir, fd)."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(limit):
        fd = os.open(root / f"replica-{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return root / f"replica-{k}", fd
    raise RuntimeError(f"no free prompt-cache directory under {root}")


@serve.ingress()
class RunnerReplica:
    def __init__(self, settings: dict[str, Any], block: int) -> None:
        base = Settings(**settings)
        cache_dir, self._lock_fd = claim_cache_dir(base.resolved_cache_dir)
        self.settings = base.model_copy(update={"cache_dir": cache_dir})
        self.block = block
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.started = time.time()
        self._app: FastAPI | None = None
        log.info("replica %s: prompt cache in %s", self.replica_id, cache_dir)

    def __serve_build_asgi_app__(self) -> FastAPI:
        self._app = create_app(self.settings)
        return self._app

    # -- requests -------------------------------------------------------------------------

    async def handle_http(self, request: ForwardedRequest) -> Any:
        """Run one forwarded HTTP request through runner's app; yields lists of ASGI
        messages (those ready at once are sent together). Cancelled when the client goes."""
        assert self._app is not None
        out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        gone = asyncio.Event()
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REPLICA_HEADER.encode(), self.replica_id.encode()))
                message = {**message, "headers": headers}
            await out.put(message)

        async def run() -> None:
            try:
                await self._app(request.scope(), receive, send)  # type: ignore[misc]
            finally:
                await out.put(None)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while True:
                batch = [await out.get()]
                while not out.empty():
                    batch.append(out.get_nowait())
                done = batch[-1] is None
                messages = [m for m in batch if m is not None]
                if messages:
                    yield messages
                if done:
                    break
            await task  # re-raise what the app raised (it already answered with a 500)
        finally:
            gone.set()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- what the router and /engines/ps see ----------------------------------------------

    async def record_routing_stats(self) -> dict[str, Any]:
        """Called by Serve's controller every `request_routing_stats_period_s`. The model
        table is read on the event loop that changes it; hashing every cached prefix takes
        a while, so that runs on a worker thread."""
        loader = self._app.state.loader if self._app is not None else None
        models = loader.resident() if loader is not None else []
        rows = [model.describe() for model in models]
        engines = [model.engine for model in models if model.engine is not None]
        blocks = await asyncio.to_thread(self._cached_blocks, engines)
        return {
            "replica": self.replica_id,
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "time": time.time(),
            "cache_dir": str(self.settings.cache_dir),
            "block": self.block,
            "blocks": list(blocks)[:MAX_BLOCKS],
            "cached_blocks": len(blocks),
            "slots": sum(e.config.slots for e in engines),
            "load": sum(e.processing + e.queued for e in engines),
            "models": rows,
        }

    def _cached_blocks(self, engines: list[Any]) -> set[int]:
        """Hashes of every block-aligned prefix in the engines' slots and prompt caches."""
        blocks: set[int] = set()
        for engine in engines:
            for tokens in engine.reusable_prefixes():  # waits for the engine thread
                blocks.update(RadixIndex.prefix_hashes(tokens, self.block))
            if engine.prompt_cache is not None:
                blocks |= engine.prompt_cache.block_hashes(self.block)
        return blocks
