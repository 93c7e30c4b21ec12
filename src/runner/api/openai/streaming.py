"""Server-sent event streams in OpenAI's chunk format (as llama-server sends them).

Chat: a first chunk with `delta.role`, one chunk per engine TokenEvent with non-empty text,
a last chunk with an empty delta carrying `finish_reason` and `timings`; with
`stream_options.include_usage` one more chunk with empty `choices`, `usage` and `timings`;
then `data: [DONE]`. Text completions follow the same plan with `text_completion` chunks.
A request the engine ends with an error gets an OpenAI error object as its last event.
With `n` > 1, chunks of the choices interleave, each with its `index`; with `logprobs`, a
token's chunk carries its log-probability.

Disconnects and the shutdown cutoff: `runner.api.core.sse`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import ServerSentEvent

from runner.api.core.chat_plan import chat_deltas, chat_finish_reason
from runner.api.core.inference import Generation, finish_error, usage
from runner.api.core.logprobs import chat_entries, completion_object
from runner.api.core.sse import DONE, EngineStream, ShutdownCutoff, merged, sse_event
from runner.api.errors.table import describe, openai_body
from runner.chat.output import ChatOutputParser
from runner.engine import FinishEvent


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
        return [sse_event(openai_body(describe(exc)))]
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
    events = [sse_event(last)]
    if include_usage:
        tail = _chunk(gen, obj, include_usage, [])
        tail["usage"] = usage(first, *finals[1:])
        tail["timings"] = first.timings.to_dict()
        events.append(sse_event(tail))
    events.append(DONE)
    return events


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
        yield sse_event(chunk(index, {"role": "assistant", "content": None}))
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
            yield sse_event(chunk(index, delta, lps=lps if k == 0 else None))
    ending = _first_problem(finals, cutoff)
    if ending is None:
        for index, (final, parser) in enumerate(zip(finals, parsers, strict=True)):
            assert final is not None
            if parser is not None:
                for delta in chat_deltas(parser.finish()):
                    yield sse_event(chunk(index, delta))
            if index < n - 1:
                reason = chat_finish_reason(final.finish_reason, parser)
                yield sse_event(chunk(index, {}, reason))
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
            yield sse_event(chunk(index, event.text, lps=event.logprobs))
            offsets[index] += len(event.text)
    ending = _first_problem(finals, cutoff)
    if ending is None:
        for index in range(n - 1):
            final = finals[index]
            assert final is not None
            yield sse_event(chunk(index, "", final.finish_reason))
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
