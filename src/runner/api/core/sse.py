"""Server-sent event streams any dialect sends: one engine `Generation` per response, closed
however the stream ends, and cut off with an error event when it outlives the shutdown grace.

Disconnects: sse-starlette listens for `http.disconnect` and cancels the task that iterates
the dialect's generator; the CancelledError lands in `RequestHandle.events`, whose `finally`
cancels the engine request (slot free at the next step). `EngineStream.__call__` then releases
the model hold in a shielded scope, also when the stream never started.

Shutdown: on SIGTERM a stream may keep going for the shutdown grace. One still running when
the grace ends is cut off: its engine request is cancelled and the client gets an error event
(`server_shutting_down`) and `[DONE]`, so it knows the answer is incomplete. sse-starlette's
own deadline (and uvicorn's) come `STREAM_END_MARGIN` seconds later, as a backstop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from runner.api.core.inference import Generation
from runner.api.errors.table import ErrorInfo, openai_body
from runner.engine import FinishEvent, RequestHandle, TokenEvent

# Seconds between the end of the shutdown grace, when running streams are ended with an
# error event, and the deadline at which sse-starlette would drop them without one.
STREAM_END_MARGIN = 2.0

DONE = ServerSentEvent(data="[DONE]")


def sse_event(payload: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


class ShutdownCutoff:
    """Ends a stream that outlives the shutdown grace: `watch` cancels its engine request
    once the grace has passed, and the stream's generator reports why it ended."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.started = anyio.Event()  # set by sse-starlette when the server shuts down
        self.passed = False

    async def watch(self, gen: Generation) -> None:
        await self.started.wait()
        await anyio.sleep(self.grace)
        self.passed = True
        for handle in gen.handles:
            handle.cancel()

    def error_events(self) -> list[ServerSentEvent]:
        message = (
            f"the server is shutting down; this stream ran past the {self.grace:g} s shutdown "
            "grace and was ended before it finished"
        )
        return [sse_event(openai_body(ErrorInfo(503, "server_shutting_down", message))), DONE]


class EngineStream(EventSourceResponse):
    """An SSE response that owns a `Generation`, always closes it, and ends it with an
    error event if it is still running when the shutdown grace ends."""

    def __init__(
        self, gen: Generation, events: AsyncIterator[ServerSentEvent], cutoff: ShutdownCutoff
    ) -> None:
        super().__init__(
            events,
            sep="\n",
            ping=0,  # tokens are the keep-alive; pings would only confuse strict clients
            shutdown_event=cutoff.started,
            shutdown_grace_period=cutoff.grace + STREAM_END_MARGIN,
        )
        self.gen = gen
        self.cutoff = cutoff

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self.cutoff.watch, self.gen)
                await super().__call__(scope, receive, send)
                tasks.cancel_scope.cancel()
        finally:
            await self.gen.close()


async def merged(gen: Generation) -> AsyncIterator[tuple[int, TokenEvent | FinishEvent]]:
    """Every choice's events, tagged with the choice's index, in arrival order."""
    if len(gen.handles) == 1:
        async for event in gen.handle:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TokenEvent | FinishEvent] | None] = asyncio.Queue()

    async def pump(index: int, handle: RequestHandle) -> None:
        async for event in handle:
            await queue.put((index, event))
        await queue.put(None)

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(gen.handles)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
