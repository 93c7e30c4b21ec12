"""Server-sent event streams in OpenAI's chunk format (as llama-server sends them).

Chat: a first chunk with `delta.role`, one chunk per engine TokenEvent with non-empty text,
a last chunk with an empty delta carrying `finish_reason` and `timings`; with
`stream_options.include_usage` one more chunk with empty `choices`, `usage` and `timings`;
then `data: [DONE]`. Text completions follow the same plan with `text_completion` chunks.

Disconnects: sse-starlette listens for `http.disconnect` and cancels the task that iterates
our generator; the CancelledError lands in `RequestHandle.events`, whose `finally` cancels
the engine request (slot free at the next step). `EngineStream.__call__` then releases the
model hold in a shielded scope, also when the stream never started.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from runner.engine import FinishEvent, TokenEvent

from .errors import error_body
from .inference import SYSTEM_FINGERPRINT, Generation, finish_error, usage

# How long a stream in flight may keep going after SIGTERM before it is cut off; server.py
# gives uvicorn's own graceful-shutdown timeout a little more than this.
SHUTDOWN_GRACE_SECONDS = 30.0

ChunkFactory = Callable[[dict[str, Any]], dict[str, Any]]


def _event(payload: dict[str, Any] | str) -> ServerSentEvent:
    data = (
        payload
        if isinstance(payload, str)
        else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    )
    return ServerSentEvent(data=data)


class EngineStream(EventSourceResponse):
    """An SSE response that owns a `Generation` and always closes it."""

    def __init__(
        self, gen: Generation, events: AsyncIterator[ServerSentEvent], grace: float
    ) -> None:
        super().__init__(
            events,
            sep="\n",
            ping=0,  # tokens are the keep-alive; pings would only confuse strict clients
            shutdown_grace_period=grace,  # let in-flight streams finish on SIGTERM
        )
        self.gen = gen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.gen.close()


async def _events(
    gen: Generation,
    include_usage: bool,
    first: dict[str, Any] | None,
    piece: ChunkFactory,
    last: ChunkFactory,
    envelope: ChunkFactory,
) -> AsyncIterator[ServerSentEvent]:
    if first is not None:
        yield _event(envelope(first))
    final: FinishEvent | None = None
    async for event in gen.handle:
        if isinstance(event, TokenEvent):
            if event.text:
                yield _event(envelope(piece({"text": event.text})))
            continue
        final = event
    if final is None or final.finish_reason == "cancelled":
        return  # nobody is listening, or the engine is going away
    err = finish_error(final)
    if err is not None:
        yield _event(error_body(err.status, err.message, err.code))
        return
    end = envelope(last({"finish_reason": final.finish_reason}))
    end["timings"] = final.timings.to_dict()
    yield _event(end)
    if include_usage:
        tail = envelope({"choices": []})
        tail["usage"] = usage(final)
        tail["timings"] = final.timings.to_dict()
        yield _event(tail)
    yield _event("[DONE]")


def _envelope(gen: Generation, obj: str, include_usage: bool) -> ChunkFactory:
    def wrap(choices: dict[str, Any]) -> dict[str, Any]:
        chunk = {
            "id": gen.id,
            "object": obj,
            "created": gen.created,
            "model": gen.model.name,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            **choices,
        }
        if include_usage:  # OpenAI: every chunk has `usage`, null until the last one
            chunk.setdefault("usage", None)
        return chunk

    return wrap


def chat_stream(gen: Generation, include_usage: bool, grace: float) -> EngineStream:
    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = _events(
        gen,
        include_usage,
        first=choice({"role": "assistant", "content": None}),
        piece=lambda p: choice({"content": p["text"]}),
        last=lambda p: choice({}, p["finish_reason"]),
        envelope=_envelope(gen, "chat.completion.chunk", include_usage),
    )
    return EngineStream(gen, events, grace)


def completion_stream(gen: Generation, include_usage: bool, grace: float) -> EngineStream:
    def choice(text: str, finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    events = _events(
        gen,
        include_usage,
        first=None,
        piece=lambda p: choice(p["text"]),
        last=lambda p: choice("", p["finish_reason"]),
        envelope=_envelope(gen, "text_completion", include_usage),
    )
    return EngineStream(gen, events, grace)
