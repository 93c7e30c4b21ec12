"""Anthropic's answer, whole or streamed, from the engine's output split by the chat output
parser: `thinking`, `text` and `tool_use` content blocks.

Streams follow Anthropic's event sequence: `message_start`, `ping`, then per block
`content_block_start`, `content_block_delta` (`text_delta`, `thinking_delta` or
`input_json_delta`) and `content_block_stop`, then `message_delta` (stop reason and usage)
and `message_stop`. A block opens when its first piece arrives, so blocks come in the order
the model wrote them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from runner.api.anthropic.caching import Breakpoints
from runner.api.core.dialect_common import parse_arguments
from runner.api.core.inference import Generation
from runner.api.core.sse import ShutdownCutoff
from runner.api.errors.renderers import anthropic_body, stream_failure
from runner.chat.output import ChatOutputParser, OutputDelta
from runner.chat.reasoning import ReasoningDelta
from runner.chat.toolcalls import ContentDelta, ToolCallDelta
from runner.engine import FinishEvent, TokenEvent

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def stop_reason(
    final: FinishEvent, has_calls: bool, stop_sequences: list[str] | None
) -> tuple[str | None, str | None]:
    """Anthropic's (`stop_reason`, `stop_sequence`): one of the request's `stop_sequences`
    (not a template's own end-of-turn string) is reported as `stop_sequence`."""
    if has_calls and final.finish_reason == "stop":
        return "tool_use", None
    if final.finish_reason == "stop" and final.stop_word in (stop_sequences or []):
        return "stop_sequence", final.stop_word
    return _STOP_REASONS.get(final.finish_reason), None


def usage(final: FinishEvent, points: Breakpoints) -> dict[str, Any]:
    """Anthropic's accounting: `cache_read_input_tokens` reused, `cache_creation_input_tokens`
    computed up to the breakpoints (per TTL in `cache_creation`), `input_tokens` the rest."""
    return points.usage(final)


def message_object(gen: Generation, model: str, content: list[Any]) -> dict[str, Any]:
    return {
        "id": gen.id,
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
    }


def content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Content blocks from `ChatPlan.message`'s OpenAI-shaped message."""
    blocks: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        blocks.append(
            {"type": "thinking", "thinking": message["reasoning_content"], "signature": ""}
        )
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": parse_arguments(function["arguments"]),
            }
        )
    return blocks


def _event(kind: str, data: dict[str, Any]) -> ServerSentEvent:
    payload = json.dumps({"type": kind, **data}, ensure_ascii=False, separators=(",", ":"))
    return ServerSentEvent(data=payload, event=kind)


class _Blocks:
    """Which content block is open; events to open, extend and close blocks."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None

    def _open(self, block: dict[str, Any]) -> list[ServerSentEvent]:
        events = self.close()
        self.index += 1
        self.kind = block["type"]
        events.append(_event("content_block_start", {"index": self.index, "content_block": block}))
        return events

    def close(self) -> list[ServerSentEvent]:
        if self.kind is None:
            return []
        self.kind = None
        return [_event("content_block_stop", {"index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> ServerSentEvent:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def feed(self, deltas: list[OutputDelta]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for delta in deltas:
            if isinstance(delta, ContentDelta) and delta.text:
                if self.kind != "text":
                    events += self._open({"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta.text}))
            elif isinstance(delta, ReasoningDelta) and delta.text:
                if self.kind != "thinking":
                    events += self._open({"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": delta.text}))
            elif isinstance(delta, ToolCallDelta):
                if delta.name is not None:
                    block = {"type": "tool_use", "id": delta.id, "name": delta.name, "input": {}}
                    events += self._open(block)
                if delta.arguments:
                    json_delta = {"type": "input_json_delta", "partial_json": delta.arguments}
                    events.append(self._delta(json_delta))
        return events


async def message_events(
    gen: Generation,
    model: str,
    prompt_n: list[int],
    parser: ChatOutputParser,
    cutoff: ShutdownCutoff,
    stop_sequences: list[str] | None,
    points: Breakpoints,
) -> AsyncIterator[ServerSentEvent]:
    start_usage = {"input_tokens": prompt_n[0], "output_tokens": 0}
    message = {**message_object(gen, model, []), "usage": start_usage}
    yield _event("message_start", {"message": message})
    yield _event("ping", {})
    blocks = _Blocks()
    final: FinishEvent | None = None
    async for event in gen.handle:
        if not isinstance(event, TokenEvent):
            final = event
        elif event.text:
            for sse in blocks.feed(parser.feed(event.text)):
                yield sse
    early, error = stream_failure(final, cutoff)
    if error is not None:
        yield _event("error", {"error": anthropic_body(error)["error"]})
    if early:
        return
    assert final is not None
    for sse in blocks.feed(parser.finish()) + blocks.close():
        yield sse
    reason, sequence = stop_reason(final, parser.n_calls > 0, stop_sequences)
    delta = {"stop_reason": reason, "stop_sequence": sequence}
    end = {"delta": delta, "usage": usage(final, points), "timings": final.timings.to_dict()}
    yield _event("message_delta", end)
    yield _event("message_stop", {})
