"""`POST /models/create {"from": NAME}` for remote names: pull into the store, streaming
progress in DMR's line format (`{"type": "progress"|"success"|"error", "message", ...}`,
JSON lines with `Accept: application/json`, else the messages as text).

The pull runs in a worker thread. Until its first download event the response has not
started, so an unknown name, a refused login or an unreachable registry is a plain HTTP
error with the right status (404, 401/403, 503); later failures end the stream with an
error line (the status is already sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from runner.api.errors.table import describe
from runner.store import ModelStore
from runner.store.pull import PullProgress, PullResult, pull

log = logging.getLogger(__name__)

_END = object()


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
    store: ModelStore, ref: str, tag: str | None, sha256: str | None, as_json: bool
) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    last_percent: dict[str, int] = {}

    def progress(event: PullProgress) -> None:
        if event.total:  # at most ~100 lines per blob
            percent = 100 * event.completed // event.total
            if last_percent.get(event.digest) == percent:
                return
            last_percent[event.digest] = percent
        loop.call_soon_threadsafe(queue.put_nowait, event)

    def run() -> PullResult:
        try:
            return pull(store, ref, progress, tag=tag, sha256=sha256)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    task = asyncio.ensure_future(asyncio.to_thread(run))
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
        raise exc  # type: ignore[misc]  # the error handler gives it its status
    media = "application/x-ndjson" if as_json else "text/plain; charset=utf-8"
    return StreamingResponse(_stream(ref, task, queue, head, ended, as_json), media_type=media)


async def _stream(
    ref: str,
    task: asyncio.Future[PullResult],
    queue: asyncio.Queue[Any],
    head: list[PullProgress],
    ended: bool,
    as_json: bool,
) -> AsyncIterator[bytes]:
    for event in head:
        yield _progress_line(event, as_json)
    if not ended:
        while (item := await queue.get()) is not _END:
            yield _progress_line(item, as_json)
    try:
        result = await task
    except Exception as exc:
        log.warning("pull of %s failed: %s", ref, exc)
        yield _line("error", f"Model pull failed: {exc}", as_json, code=describe(exc).code)
        return
    log.info("pulled %s as %s (sha256:%s)", result.source, result.name, result.entry.short_id)
    yield _line(
        "success",
        f"Model pulled successfully: {result.name}",
        as_json,
        id=f"sha256:{result.entry.id}",
        name=result.name,
        downloaded=result.downloaded,
    )
