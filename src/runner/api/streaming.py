"""Server-sent event streams in OpenAI's chunk format (as llama-server sends them).

Chat: a first chunk with `delta.role`, one chunk per engine TokenEvent with non-empty text,
a last chunk with an empty delta carrying `finish_reason` and `timings`; with
`stream_options.include_usage` one more chunk with empty `choices`, `usage` and `timings`;
then `data: [DONE]`. Text completions follow the same plan with `text_completion` chunks.
A request the engine ends with an error gets an OpenAI error object as its last event.

Disconnects: sse-starlette listens for `http.disconnect` and cancels the task that iterates
our generator; the CancelledError lands in `RequestHandle.events`, whose `finally` cancels
the engine request (slot free at the next step). `EngineStream.__call__` then releases the
model hold in a shielded scope, also when the stream never started.

Shutdown: on SIGTERM a stream may keep going for the shutdown grace. One still running when
the grace ends is cut off: its engine request is cancelled and the client gets an error event
(`server_shutting_down`) and `[DONE]`, so it knows the answer is incomplete. sse-starlette's
own deadline (and uvicorn's) come `STREAM_END_MARGIN` seconds later, as a backstop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from runner.chat.output import ChatOutputParser
from runner.engine import FinishEvent, TokenEvent

from .chat_output import chat_deltas, chat_finish_reason
from .errors import ErrorInfo, describe, openai_body
from .inference import SYSTEM_FINGERPRINT, Generation, finish_error, usage

# Seconds between the end of the shutdown grace, when running streams are ended with an
# error event, and the deadline at which sse-starlette would drop them without one.
STREAM_END_MARGIN = 2.0

DONE = ServerSentEvent(data="[DONE]")


def _event(payload: dict[str, Any]) -> ServerSentEvent:
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
        gen.handle.cancel()

    def error_events(self) -> list[ServerSentEvent]:
        message = (
            f"the server is shutting down; this stream ran past the {self.grace:g} s shutdown "
            "grace and was ended before it finished"
        )
        return [_event(openai_body(ErrorInfo(503, "server_shutting_down", message))), DONE]


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


def _chunk(gen: Generation, obj: str, include_usage: bool, choices: list[Any]) -> dict[str, Any]:
    chunk = {
        "id": gen.id,
        "object": obj,
        "created": gen.created,
        "model": gen.model.name,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }
    if include_usage:  # OpenAI: every chunk has `usage`, null until the last one
        chunk["usage"] = None
    return chunk


def _unfinished(final: FinishEvent | None, cutoff: ShutdownCutoff) -> list[ServerSentEvent] | None:
    """The last events of a stream that did not finish normally; None if it did."""
    if cutoff.passed:
        return cutoff.error_events()
    if final is None or final.finish_reason == "cancelled":
        return []  # nobody is listening, or the engine is going away
    exc = finish_error(final)
    if exc is not None:
        return [_event(openai_body(describe(exc)))]
    return None


def _summary(
    gen: Generation, obj: str, include_usage: bool, final: FinishEvent, last: dict[str, Any]
) -> list[ServerSentEvent]:
    """After the finish chunk `last`: the usage chunk if asked for, then `[DONE]`."""
    last["timings"] = final.timings.to_dict()
    events = [_event(last)]
    if include_usage:
        tail = _chunk(gen, obj, include_usage, [])
        tail["usage"] = usage(final)
        tail["timings"] = final.timings.to_dict()
        events.append(_event(tail))
    events.append(DONE)
    return events


async def chat_events(
    gen: Generation,
    include_usage: bool,
    cutoff: ShutdownCutoff,
    output: ChatOutputParser | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """`output` splits reasoning and tool calls out of the text (`chat_deltas`)."""
    obj = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _chunk(gen, obj, include_usage, [choice])

    yield _event(chunk({"role": "assistant", "content": None}))
    final: FinishEvent | None = None
    async for event in gen.handle:
        if isinstance(event, TokenEvent):
            if event.text and output is None:
                yield _event(chunk({"content": event.text}))
            elif event.text:
                for delta in chat_deltas(output.feed(event.text)):
                    yield _event(chunk(delta))
        else:
            final = event
    ending = _unfinished(final, cutoff)
    if ending is None:
        assert final is not None
        if output is not None:
            for delta in chat_deltas(output.finish()):
                yield _event(chunk(delta))
        reason = chat_finish_reason(final.finish_reason, output)
        ending = _summary(gen, obj, include_usage, final, chunk({}, reason))
    for sse in ending:
        yield sse


async def completion_events(
    gen: Generation, include_usage: bool, cutoff: ShutdownCutoff
) -> AsyncIterator[ServerSentEvent]:
    obj = "text_completion"

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return _chunk(gen, obj, include_usage, [choice])

    final: FinishEvent | None = None
    async for event in gen.handle:
        if isinstance(event, TokenEvent):
            if event.text:
                yield _event(chunk(event.text))
        else:
            final = event
    ending = _unfinished(final, cutoff)
    if ending is None:
        assert final is not None
        ending = _summary(gen, obj, include_usage, final, chunk("", final.finish_reason))
    for sse in ending:
        yield sse


def chat_stream(
    gen: Generation, include_usage: bool, grace: float, output: ChatOutputParser | None = None
) -> EngineStream:
    cutoff = ShutdownCutoff(grace)
    return EngineStream(gen, chat_events(gen, include_usage, cutoff, output), cutoff)


def completion_stream(gen: Generation, include_usage: bool, grace: float) -> EngineStream:
    cutoff = ShutdownCutoff(grace)
    return EngineStream(gen, completion_events(gen, include_usage, cutoff), cutoff)
