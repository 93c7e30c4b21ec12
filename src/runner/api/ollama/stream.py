"""Ollama's answers: the NDJSON stream and the whole object, from the engine's output split by
the chat output parser (content, `thinking`, `tool_calls` with arguments as objects).

Streamed content and thinking go out as they come; tool calls go out whole, in one object
after the text, as Ollama sends them. The last object (`done: true`) carries Ollama's
counters in nanoseconds (`prompt_eval_count` is the whole prompt, as Ollama counts it, the
tokens reused from a cache included: `timings.prompt_n` / `timings.cache_n` split it) and
runner's `timings`; a generate answer's last object also carries `context`, the token ids of
the prompt and the answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
from fastapi.responses import StreamingResponse
from sse_starlette.sse import AppStatus
from starlette.types import Receive, Scope, Send

from runner.api.core.dialect_common import parse_arguments, whole_calls
from runner.api.core.inference import Generation, PromptBuilder
from runner.api.core.sse import ShutdownCutoff
from runner.api.errors.renderers import ollama_body, stream_failure
from runner.api.errors.table import APIError
from runner.chat.output import ChatOutputParser, OutputDelta
from runner.chat.reasoning import ReasoningDelta
from runner.chat.toolcalls import ContentDelta, ToolCallDelta
from runner.engine import Engine, FinishEvent, TokenEvent
from runner.loader import ResidentModel

SHUTDOWN_POLL_SECONDS = 0.5

# The dialect object for one piece of output: ("message" for chat, "response" for
# generate), the envelope (model, created_at) added by the caller.
Envelope = Callable[[dict[str, Any]], dict[str, Any]]


def counters(final: FinishEvent, started_ns: int, load_ns: int) -> dict[str, Any]:
    """Ollama's counters (nanoseconds) plus runner's `timings`."""
    timings = final.timings
    return {
        "total_duration": time.perf_counter_ns() - started_ns,
        "load_duration": load_ns,
        "prompt_eval_count": final.prompt_tokens,
        "prompt_eval_duration": int(timings.prompt_ms * 1e6),
        "eval_count": final.completion_tokens,
        "eval_duration": int(timings.predicted_ms * 1e6),
        "timings": timings.to_dict(),
    }


def conversation_tokens(gen: Generation) -> list[int]:
    """`/api/generate`'s `context`: the prompt's token ids and the answer's (a stop token
    that ended it left out). Read once the request finished: the engine no longer adds."""
    job = gen.handle.job
    return [*job.request.prompt_tokens, *job.output_tokens]


def continued(context: Any, prompt_of: PromptBuilder) -> PromptBuilder:
    """`/api/generate`'s `context` sent back (an earlier answer's token ids): the new
    prompt's tokens follow it, without a second BOS; the prompt cache reuses the prefix."""
    if not isinstance(context, list) or not all(type(t) is int for t in context):
        raise APIError(400, "context must be a list of token ids")

    async def build(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        tokens, stops = await prompt_of(model, engine)
        n_vocab = engine.info.n_vocab
        bad = next((t for t in context if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise APIError(400, f"context token {bad} is outside the vocabulary [0, {n_vocab})")
        bos = engine.tokenize("", True, False)
        if bos and tokens[: len(bos)] == bos:
            tokens = tokens[len(bos) :]
        return [*context, *tokens], stops

    return build


def ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI `tool_calls` (arguments as JSON text) as Ollama's (arguments as an object)."""
    return [
        {
            "id": call.get("id"),
            "function": {
                "index": i,
                "name": call["function"]["name"],
                "arguments": parse_arguments(call["function"]["arguments"]),
            },
        }
        for i, call in enumerate(calls)
    ]


def piece(
    key: str, content: str = "", thinking: str | None = None, calls: list[Any] | None = None
) -> dict[str, Any]:
    """The `message` (chat) or `response` (generate) part of an Ollama object."""
    if key == "response":
        out: dict[str, Any] = {"response": content}
        if thinking:
            out["thinking"] = thinking
        return out
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"message": message}


def done(final: FinishEvent | None) -> dict[str, Any]:
    if final is None:
        return {"done": False}
    return {"done": True, "done_reason": final.finish_reason}


def whole(key: str, message: dict[str, Any], final: FinishEvent) -> dict[str, Any]:
    """The non-streamed answer from `ChatPlan.message`'s OpenAI-shaped message."""
    calls = ollama_calls(whole_calls(message.get("tool_calls") or [], final))
    return piece(key, message.get("content") or "", message.get("reasoning_content"), calls)


class NdjsonStream(StreamingResponse):
    """An NDJSON response that owns a `Generation` and always releases it; a client that
    hangs up cancels the iteration, which cancels the engine request. Like the SSE streams
    (`streaming.EngineStream`), one still running when the shutdown grace ends is cut off
    with an error line."""

    def __init__(
        self, gen: Generation, lines: AsyncIterator[bytes], cutoff: ShutdownCutoff
    ) -> None:
        super().__init__(lines, media_type="application/x-ndjson")
        self.gen = gen
        self.cutoff = cutoff

    async def _shutdown_started(self) -> None:
        # sse-starlette raises this flag when uvicorn gets its exit signal (it is what ends
        # the SSE streams); plain streaming responses have no such hook of their own.
        while not AppStatus.should_exit:
            await anyio.sleep(SHUTDOWN_POLL_SECONDS)
        self.cutoff.started.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._shutdown_started)
                tasks.start_soon(self.cutoff.watch, self.gen)
                await super().__call__(scope, receive, send)
                tasks.cancel_scope.cancel()
        finally:
            await self.gen.close()


def line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _text_pieces(key: str, deltas: list[OutputDelta], calls: list[dict[str, Any]]) -> list[Any]:
    """Pieces for content and thinking; tool-call deltas are gathered into `calls`."""
    out = []
    for delta in deltas:
        if isinstance(delta, ContentDelta) and delta.text:
            out.append(piece(key, delta.text))
        elif isinstance(delta, ReasoningDelta) and delta.text:
            out.append(piece(key, thinking=delta.text))
        elif isinstance(delta, ToolCallDelta):
            if delta.name is not None:
                function = {"name": delta.name, "arguments": delta.arguments}
                calls.append({"id": delta.id, "function": function})
            else:
                calls[delta.index]["function"]["arguments"] += delta.arguments
    return out


async def lines(
    gen: Generation,
    key: str,
    parser: ChatOutputParser | None,
    envelope: Envelope,
    tail: Callable[[FinishEvent], dict[str, Any]],
    cutoff: ShutdownCutoff,
) -> AsyncIterator[bytes]:
    """The NDJSON stream: pieces as they come, tool calls whole, then the final object."""
    calls: list[dict[str, Any]] = []
    final: FinishEvent | None = None
    async for event in gen.handle:
        if not isinstance(event, TokenEvent):
            final = event
        elif event.text and parser is None:
            yield line(envelope({**piece(key, event.text), **done(None)}))
        elif event.text:
            for part in _text_pieces(key, parser.feed(event.text), calls):
                yield line(envelope({**part, **done(None)}))
    early, error = stream_failure(final, cutoff)
    if error is not None:
        yield line(ollama_body(error))
    if early:
        return
    assert final is not None
    if parser is not None:
        for part in _text_pieces(key, parser.finish(), calls):
            yield line(envelope({**part, **done(None)}))
    calls = whole_calls(calls, final)
    if calls:
        yield line(envelope({**piece(key, calls=ollama_calls(calls)), **done(None)}))
    yield line(envelope({**piece(key), **done(final), **tail(final)}))
