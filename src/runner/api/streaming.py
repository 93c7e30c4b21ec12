"""Server-sent event streams in OpenAI's chunk format (as llama-server sends them).

Chat: a first chunk with `delta.role`, one chunk per engine TokenEvent with non-empty text,
a last chunk with an empty delta carrying `finish_reason` and `timings`; with
`stream_options.include_usage` one more chunk with empty `choices`, `usage` and `timings`;
then `data: [DONE]`. Text completions follow the same plan with `text_completion` chunks.
A request the engine ends with an error gets an OpenAI error object as its last event.
With `n` > 1, chunks of the choices interleave, each with its `index`; with `logprobs`, a
token's chunk carries its log-probability.

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

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from runner.chat.output import ChatOutputParser
from runner.engine import FinishEvent, RequestHandle, TokenEvent

from .chat_output import chat_deltas, chat_finish_reason
from .errors import ErrorInfo, describe, openai_body
from .inference import Generation, finish_error, usage
from .logprobs import chat_entries, completion_object

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
        for handle in gen.handles:
            handle.cancel()

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
    chunk = gen.envelope(obj, choices)
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
    gen: Generation,
    obj: str,
    include_usage: bool,
    finals: list[FinishEvent | None],
    last: dict[str, Any],
) -> list[ServerSentEvent]:
    """After the finish chunk `last`: the usage chunk if asked for, then `[DONE]`. The
    prompt was computed once, by the first choice, whose timings are reported."""
    first = finals[0]
    assert first is not None
    last["timings"] = first.timings.to_dict()
    events = [_event(last)]
    if include_usage:
        tail = _chunk(gen, obj, include_usage, [])
        tail["usage"] = usage(first, *finals[1:])
        tail["timings"] = first.timings.to_dict()
        events.append(_event(tail))
    events.append(DONE)
    return events


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


def _first_problem(finals: list[FinishEvent | None], cutoff: ShutdownCutoff):  # noqa: ANN202
    for final in finals:
        ending = _unfinished(final, cutoff)
        if ending is not None:
            return ending
    return None


async def chat_events(
    gen: Generation,
    include_usage: bool,
    cutoff: ShutdownCutoff,
    output: Callable[[], ChatOutputParser] | None = None,
    logprobs: bool = False,
) -> AsyncIterator[ServerSentEvent]:
    """`output` makes the parser that splits reasoning and tool calls out of each choice's
    text (`chat_deltas`); `logprobs` adds each token's log-probability to its chunk."""
    obj = "chat.completion.chunk"
    n = len(gen.handles)
    parsers = [output() if output is not None else None for _ in range(n)]
    piece = gen.model.engine.piece_bytes if logprobs and gen.model.engine else None

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None = None, lps: Any = None
    ) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": finish}
        if lps:
            choice["logprobs"] = {"content": chat_entries(lps, piece)} if piece else None
        return _chunk(gen, obj, include_usage, [choice])

    for index in range(n):
        yield _event(chunk(index, {"role": "assistant", "content": None}))
    finals: list[FinishEvent | None] = [None] * n
    async for index, event in merged(gen):
        if isinstance(event, FinishEvent):
            finals[index] = event
            continue
        parser = parsers[index]
        lps = event.logprobs if piece else ()
        deltas = [{"content": event.text}] if parser is None and event.text else []
        if parser is not None and event.text:
            deltas = chat_deltas(parser.feed(event.text))
        if lps and not deltas:
            deltas = [{}]
        for k, delta in enumerate(deltas):
            yield _event(chunk(index, delta, lps=lps if k == 0 else None))
    ending = _first_problem(finals, cutoff)
    if ending is None:
        for index, (final, parser) in enumerate(zip(finals, parsers, strict=True)):
            assert final is not None
            if parser is not None:
                for delta in chat_deltas(parser.finish()):
                    yield _event(chunk(index, delta))
            if index < n - 1:
                reason = chat_finish_reason(final.finish_reason, parser)
                yield _event(chunk(index, {}, reason))
        last = finals[-1]
        assert last is not None
        reason = chat_finish_reason(last.finish_reason, parsers[-1])
        ending = _summary(gen, obj, include_usage, finals, chunk(n - 1, {}, reason))
    for sse in ending:
        yield sse


async def completion_events(
    gen: Generation, include_usage: bool, cutoff: ShutdownCutoff, logprobs: bool = False
) -> AsyncIterator[ServerSentEvent]:
    obj = "text_completion"
    n = len(gen.handles)
    piece = gen.model.engine.piece_bytes if logprobs and gen.model.engine else None
    offsets = [0] * n

    def chunk(index: int, text: str, finish: str | None = None, lps: Any = ()) -> dict[str, Any]:
        lp_obj = completion_object(lps, piece, offsets[index]) if piece and lps else None
        choice = {"index": index, "text": text, "logprobs": lp_obj, "finish_reason": finish}
        return _chunk(gen, obj, include_usage, [choice])

    finals: list[FinishEvent | None] = [None] * n
    async for index, event in merged(gen):
        if isinstance(event, FinishEvent):
            finals[index] = event
        elif event.text or (piece and event.logprobs):
            yield _event(chunk(index, event.text, lps=event.logprobs))
            offsets[index] += len(event.text)
    ending = _first_problem(finals, cutoff)
    if ending is None:
        for index in range(n - 1):
            final = finals[index]
            assert final is not None
            yield _event(chunk(index, "", final.finish_reason))
        last = finals[-1]
        assert last is not None
        ending = _summary(gen, obj, include_usage, finals, chunk(n - 1, "", last.finish_reason))
    for sse in ending:
        yield sse


def chat_stream(
    gen: Generation,
    include_usage: bool,
    grace: float,
    output: Callable[[], ChatOutputParser] | None = None,
    logprobs: bool = False,
) -> EngineStream:
    cutoff = ShutdownCutoff(grace)
    events = chat_events(gen, include_usage, cutoff, output, logprobs)
    return EngineStream(gen, events, cutoff)


def completion_stream(
    gen: Generation, include_usage: bool, grace: float, logprobs: bool = False
) -> EngineStream:
    cutoff = ShutdownCutoff(grace)
    return EngineStream(gen, completion_events(gen, include_usage, cutoff, logprobs), cutoff)
