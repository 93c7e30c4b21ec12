"""The Responses API's streamed events (SSE, `event:` named as `type`, each with a
`sequence_number`): `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`
..., `response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
then `response.completed` (or `response.incomplete` at the token limit, `response.failed`
on an engine error). The response is stored before its last event is sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from sse_starlette import ServerSentEvent

from runner.engine import FinishEvent, TokenEvent

from .dialect_errors import stream_failure
from .errors import openai_body
from .inference import Generation
from .responses import ResponsesRequest, finish, message_item, new_id, save
from .state import settings_of
from .streaming import EngineStream, ShutdownCutoff


class _Sequence:
    def __init__(self) -> None:
        self.number = 0

    def event(self, kind: str, **data: Any) -> ServerSentEvent:
        payload = {"type": kind, "sequence_number": self.number, **data}
        self.number += 1
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return ServerSentEvent(data=text, event=kind)


async def _events(
    request: Request,
    gen: Generation,
    body: ResponsesRequest,
    obj: dict[str, Any],
    history: list[dict[str, Any]],
    items: list[dict[str, Any]],
    cutoff: ShutdownCutoff,
) -> AsyncIterator[ServerSentEvent]:
    seq = _Sequence()
    item_id = new_id("msg_")
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield seq.event("response.created", response=obj)
    yield seq.event("response.in_progress", response=obj)
    pending = message_item(item_id, "", status="in_progress")
    pending["content"] = []
    yield seq.event("response.output_item.added", output_index=0, item=pending)
    empty_part = {"type": "output_text", "text": "", "annotations": []}
    yield seq.event("response.content_part.added", **where, part=empty_part)
    parts: list[str] = []
    final: FinishEvent | None = None
    async for event in gen.handle:
        if isinstance(event, TokenEvent):
            if event.text:
                parts.append(event.text)
                yield seq.event(
                    "response.output_text.delta", **where, delta=event.text, logprobs=[]
                )
            continue
        final = event
    early, error = stream_failure(final, cutoff)
    if error is not None:
        failed = {**obj, "status": "failed", "error": openai_body(error)["error"]}
        yield seq.event("response.failed", response=failed)
    if early:
        return
    assert final is not None
    text = "".join(parts)
    yield seq.event("response.output_text.done", **where, text=text, logprobs=[])
    part = {"type": "output_text", "text": text, "annotations": []}
    yield seq.event("response.content_part.done", **where, part=part)
    item = message_item(item_id, text)
    done = finish(obj, final, item)
    yield seq.event("response.output_item.done", output_index=0, item=item)
    await save(request, body, done, history, items, text)
    kind = "response.completed" if done["status"] == "completed" else "response.incomplete"
    yield seq.event(kind, response=done)


def response_stream(
    request: Request,
    gen: Generation,
    body: ResponsesRequest,
    obj: dict[str, Any],
    history: list[dict[str, Any]],
    items: list[dict[str, Any]],
) -> EngineStream:
    cutoff = ShutdownCutoff(settings_of(request).shutdown_grace)
    events = _events(request, gen, body, obj, history, items, cutoff)
    return EngineStream(gen, events, cutoff)
