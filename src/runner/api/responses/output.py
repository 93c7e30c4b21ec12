"""A Responses API answer, whole or streamed, from the engine's output split by the chat
output parser into output items: `reasoning`, `message` (`output_text`) and
`function_call`.

Streamed events (SSE, `event:` named as `type`, each with a `sequence_number`):
`response.created`, `response.in_progress`, then per item `response.output_item.added`,
its deltas (`response.output_text.delta` inside a `content_part`,
`response.reasoning_text.delta`, `response.function_call_arguments.delta`), their `.done`
events and `response.output_item.done`; last `response.completed` (`response.incomplete` at
the token limit, `response.failed` on an engine error). An item opens when its first piece
arrives, so items come in the order the model wrote them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette import ServerSentEvent

from runner.api.core.inference import Generation
from runner.api.core.sse import ShutdownCutoff
from runner.api.errors.renderers import stream_failure
from runner.api.errors.table import describe, openai_body
from runner.chat.output import ChatOutputParser, OutputDelta
from runner.chat.reasoning import ReasoningDelta
from runner.chat.toolcalls import ContentDelta, ToolCallDelta
from runner.engine import FinishEvent, TokenEvent


def new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24).replace("-", "a").replace("_", "b")


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Output items from `ChatPlan.message`'s OpenAI-shaped message."""
    items = []
    if message.get("reasoning_content"):
        items.append(reasoning_item(new_id("rs_"), message["reasoning_content"]))
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        items.append(message_item(new_id("msg_"), message.get("content") or ""))
    for call in calls:
        function = call["function"]
        items.append(
            call_item(
                new_id("fc_"), call["id"], function["name"], function["arguments"], "completed"
            )
        )
    return items


def assistant_message(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat message a later turn replays for these output items."""
    text = "".join(
        part["text"] for item in items if item["type"] == "message" for part in item["content"]
    )
    message: dict[str, Any] = {"role": "assistant", "content": text}
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in items
        if item["type"] == "function_call"
    ]
    if calls:
        message["tool_calls"] = calls
    return message


def usage(final: FinishEvent) -> dict[str, Any]:
    return {
        "input_tokens": final.prompt_tokens,
        "input_tokens_details": {"cached_tokens": final.timings.cache_n},
        "output_tokens": final.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": final.prompt_tokens + final.completion_tokens,
    }


def finish(obj: dict[str, Any], final: FinishEvent, items: list[dict[str, Any]]) -> dict[str, Any]:
    """`obj` completed (or incomplete at the token limit) with output `items`."""
    done = {**obj, "output": items, "usage": usage(final), "timings": final.timings.to_dict()}
    if final.finish_reason == "length":
        done["status"] = "incomplete"
        done["incomplete_details"] = {"reason": "max_output_tokens"}
        for item in items:
            if "status" in item:
                item["status"] = "incomplete"
    else:
        done["status"] = "completed"
    return done


# ----- streaming ---------------------------------------------------------------------------


class _Items:
    """The open output item and the events that open, extend and close items."""

    def __init__(self) -> None:
        self.number = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None

    def event(self, kind: str, **data: Any) -> ServerSentEvent:
        payload = {"type": kind, "sequence_number": self.number, **data}
        self.number += 1
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return ServerSentEvent(data=text, event=kind)

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items) - 1}

    def _start(self, item: dict[str, Any]) -> list[ServerSentEvent]:
        events = self.close()
        self.items.append(item)
        self.open = item
        index = len(self.items) - 1
        events.append(self.event("response.output_item.added", output_index=index, item=item))
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(
                self.event(
                    "response.content_part.added", **self._where(), content_index=0, part=part
                )
            )
        return events

    def close(self) -> list[ServerSentEvent]:
        item, self.open = self.open, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": len(self.items) - 1}
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            text = part["text"]
            events.append(
                self.event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
            )
            events.append(
                self.event("response.content_part.done", **where, content_index=0, part=part)
            )
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"]
            events.append(
                self.event("response.reasoning_text.done", **where, content_index=0, text=text)
            )
        else:
            events.append(
                self.event(
                    "response.function_call_arguments.done", **where, arguments=item["arguments"]
                )
            )
        if "status" in item:
            item["status"] = "completed"
        events.append(
            self.event("response.output_item.done", output_index=where["output_index"], item=item)
        )
        return events

    def feed(self, deltas: list[OutputDelta]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for delta in deltas:
            if isinstance(delta, ContentDelta) and delta.text:
                if self.open is None or self.open["type"] != "message":
                    item = message_item(new_id("msg_"), "", status="in_progress")
                    events += self._start(item)
                assert self.open is not None
                self.open["content"][0]["text"] += delta.text
                events.append(
                    self.event(
                        "response.output_text.delta",
                        **self._where(),
                        content_index=0,
                        delta=delta.text,
                        logprobs=[],
                    )
                )
            elif isinstance(delta, ReasoningDelta) and delta.text:
                if self.open is None or self.open["type"] != "reasoning":
                    events += self._start(reasoning_item(new_id("rs_"), ""))
                assert self.open is not None
                self.open["content"][0]["text"] += delta.text
                events.append(
                    self.event(
                        "response.reasoning_text.delta",
                        **self._where(),
                        content_index=0,
                        delta=delta.text,
                    )
                )
            elif isinstance(delta, ToolCallDelta):
                if delta.name is not None:
                    item = call_item(
                        new_id("fc_"), delta.id or new_id("call_"), delta.name, "", "in_progress"
                    )
                    events += self._start(item)
                if delta.arguments and self.open is not None:
                    self.open["arguments"] += delta.arguments
                    events.append(
                        self.event(
                            "response.function_call_arguments.delta",
                            **self._where(),
                            delta=delta.arguments,
                        )
                    )
        return events


Save = Callable[[dict[str, Any]], Awaitable[None]]


async def response_events(
    gen: Generation,
    obj: dict[str, Any],
    parser: ChatOutputParser,
    cutoff: ShutdownCutoff,
    save: Save,
) -> AsyncIterator[ServerSentEvent]:
    """The stream; `save(response)` stores the finished response before its last event."""
    items = _Items()
    yield items.event("response.created", response=obj)
    yield items.event("response.in_progress", response=obj)
    final: FinishEvent | None = None
    async for event in gen.handle:
        if not isinstance(event, TokenEvent):
            final = event
        elif event.text:
            for sse in items.feed(parser.feed(event.text)):
                yield sse
    early, error = stream_failure(final, cutoff)
    if error is not None:
        failed = {**obj, "status": "failed", "error": openai_body(error)["error"]}
        yield items.event("response.failed", response=failed)
    if early:
        return
    assert final is not None
    tail = items.feed(parser.finish())
    if not items.items:  # an empty answer is still one (empty) message, as OpenAI sends it
        tail += items._start(message_item(new_id("msg_"), "", status="in_progress"))
    for sse in tail + items.close():
        yield sse
    done = finish(obj, final, items.items)
    try:
        await save(done)
    except Exception as exc:  # not stored (a full disk): the client must not think it was
        failed = {**done, "status": "failed", "error": openai_body(describe(exc))["error"]}
        yield items.event("response.failed", response=failed)
        return
    kind = "response.completed" if done["status"] == "completed" else "response.incomplete"
    yield items.event(kind, response=done)
