"""`POST /models/create {"from": NAME}` for remote names (and Ollama's `/api/pull`): pull into
the store, streaming progress in DMR's line format (`{"type": "progress"|"success"|"error",
"message", ...}`, JSON lines with `Accept: application/json`, else the messages as text).

Each pull runs on a thread of the app's own pull pool (`PullPool`, `MAX_PULLS` threads), never
on the shared pool that every other route's `asyncio.to_thread` uses: a slow or hostile
remote can then hold pulls only, not store listings, tokenizing or the Responses store. Past
`MAX_PULLS` running pulls a new one is refused at once with a 503 (`too_many_pulls`,
`Retry-After`). A pull stops when its client leaves: the download raises `PullCancelled` at
its next received block (a remote that sends nothing at all holds its thread until the
download's read timeout, and no other).

Until its first download event the response has not started, so an unknown name, a refused
login or an unreachable registry is a plain HTTP error with the right status (404, 401/403,
503); later failures end the stream with an error line (the status is already sent) that
carries the error's `code` and `status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from runner.api.core.inference import on_disconnect
from runner.api.errors.table import APIError, ErrorInfo, describe
from runner.api.state import settings_of, store_of
from runner.store.pull import PullProgress, PullResult, pull

log = logging.getLogger(__name__)

MAX_PULLS = 4
RETRY_AFTER_SECONDS = 30
_END = object()


class PullCancelled(Exception):
    """The client of a pull went away; raised in the pull's thread to stop the download."""


class PullPool:
    """The pulls of one app: their own threads, at most `limit` at once (counted until the
    thread is done, not until the client leaves: a stuck download still holds its thread)."""

    def __init__(self, limit: int = MAX_PULLS) -> None:
        self.limit = limit
        self.running = 0  # touched on the event loop only
        self.executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="runner-pull")

    def submit(self, run: Any) -> asyncio.Future[PullResult]:
        if self.running >= self.limit:
            raise APIError(
                503,
                f"{self.running} pulls are running, the most this server runs at once; "
                "try again when one has finished",
                "too_many_pulls",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.running += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, run)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: asyncio.Future[PullResult]) -> None:
        self.running -= 1
        if not future.cancelled():
            future.exception()  # seen: a pull whose client left ends with PullCancelled


def pull_failure(exc: BaseException) -> ErrorInfo:
    """How a failed pull is reported: the error table's row, except that a 500 there (what
    the remote sent made a check of runner's own fail) is the remote's fault: a 502."""
    info = describe(exc)
    if info.status == 500:
        return ErrorInfo(502, "pull_failed", f"the pull failed: {info.message}", param="from")
    return info


def _line(kind: str, message: str, as_json: bool, **extra: Any) -> bytes:
    if as_json:
        return (json.dumps({"type": kind, "message": message, **extra}) + "\n").encode()
    return (message + "\n").encode()


def _progress_line(event: PullProgress, as_json: bool) -> bytes:
    if event.total:
        message = f"Downloaded: {event.completed / 1e6:.2f} MB / {event.total / 1e6:.2f} MB"
    else:
        message = event.status.capitalize()
    return _line(
        "progress",
        message,
        as_json,
        status=event.status,
        digest=event.digest,
        total=event.total,
        pulled=event.completed,
    )


async def pull_response(
    request: Request, ref: str, tag: str | None, sha256: str | None, as_json: bool
) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    last_percent: dict[str, int] = {}
    gone = threading.Event()  # the client left: the pull's thread stops at its next block
    store, settings = store_of(request), settings_of(request)

    def progress(event: PullProgress) -> None:
        if gone.is_set():
            raise PullCancelled(f"the client of the pull of {ref} went away")
        if event.total:  # at most ~100 lines per blob
            percent = 100 * event.completed // event.total
            if last_percent.get(event.digest) == percent:
                return
            last_percent[event.digest] = percent
        loop.call_soon_threadsafe(queue.put_nowait, event)

    def run() -> PullResult:
        try:
            return pull(store, ref, progress, tag=tag, sha256=sha256, settings=settings)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    task = request.app.state.pulls.submit(run)
    watcher = loop.create_task(on_disconnect(request, gone.set))
    try:
        head: list[PullProgress] = []
        ended = False
        while not ended:  # hold the response until the download starts (or the pull ends)
            item = await queue.get()
            ended = item is _END
            if not ended:
                head.append(item)
                if item.digest:
                    break
        if ended:  # the worker posted its last event; its future resolves right after
            await asyncio.wait({task})
        if task.done() and task.exception() is not None:
            exc = task.exception()
            log.info("pull of %s failed: %s", ref, exc)
            info = pull_failure(exc)  # type: ignore[arg-type]
            raise APIError(info.status, info.message, info.code, info.headers, info.param)
    except BaseException:
        gone.set()
        watcher.cancel()
        raise
    media = "application/x-ndjson" if as_json else "text/plain; charset=utf-8"
    lines = _stream(ref, task, queue, head, ended, as_json, gone, watcher)
    return StreamingResponse(lines, media_type=media)


async def _stream(
    ref: str,
    task: asyncio.Future[PullResult],
    queue: asyncio.Queue[Any],
    head: list[PullProgress],
    ended: bool,
    as_json: bool,
    gone: threading.Event,
    watcher: asyncio.Task[None],
) -> AsyncIterator[bytes]:
    try:
        for event in head:
            yield _progress_line(event, as_json)
        if not ended:
            while (item := await queue.get()) is not _END:
                yield _progress_line(item, as_json)
        try:
            result = await task
        except PullCancelled:
            return  # no one is listening
        except Exception as exc:
            log.warning("pull of %s failed: %s", ref, exc)
            info = pull_failure(exc)
            message = f"Model pull failed: {info.message}"
            yield _line("error", message, as_json, code=info.code, status=info.status)
            return
    finally:  # also when the client left mid-stream (the task iterating us is cancelled)
        gone.set()
        watcher.cancel()
    log.info("pulled %s as %s (sha256:%s)", result.source, result.name, result.entry.short_id)
    yield _line(
        "success",
        f"Model pulled successfully: {result.name}",
        as_json,
        id=f"sha256:{result.entry.id}",
        name=result.name,
        downloaded=result.downloaded,
    )
