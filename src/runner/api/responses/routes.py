"""OpenAI's Responses API: `POST /v1/responses`, `GET/DELETE /v1/responses/{id}` and
`GET /v1/responses/{id}/input_items`, under every OpenAI prefix (and `/responses`, as DMR).

`input` (a string or items: messages, `function_call`, `function_call_output`) plus
`instructions` and the conversation of `previous_response_id` become chat messages that run
through `inference.start`, like `/v1/chat/completions`, on the same prompt cache: a
continued conversation reuses its cached prefix, also after a restart (the prompt cache's
disk tier and the response store both persist). `usage.input_tokens_details.cached_tokens`
is that reused prefix. Stored responses: `store.py`; output items and
streams: `output.py`.
Errors are OpenAI-shaped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from runner.api.core.dialect_common import (
    OPENAI_PREFIXES,
    chat_plan,
    chat_prompt,
    check_final,
    generation_fields,
    read_json,
    validated,
)
from runner.api.core.dialect_common import text_of as _text_of
from runner.api.core.inference import collect, model_name, start
from runner.api.core.prompt_cache import PromptCacheKey, PromptCacheRetention, steer
from runner.api.core.schemas import INT32_MAX, json_body, model_field
from runner.api.core.sse import EngineStream, ShutdownCutoff
from runner.api.errors.table import APIError
from runner.api.responses.output import (
    assistant_message,
    finish,
    new_id,
    output_items,
    response_events,
)
from runner.api.responses.record import (
    check_metadata,
    echoed_text,
    echoed_tool_choice,
    echoed_tools,
    stored_items,
)
from runner.api.responses.store import ResponseStore, StoreFull
from runner.api.state import settings_of

router = APIRouter()

DEFAULT_PAGE = 20
MAX_PAGE = 100


class ResponsesRequest(BaseModel):
    # JSON types exactly as documented (no 0 for false), like the chat route's body.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = model_field(None, blank_is_default=True)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    text: dict[str, Any] | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None  # bounded by `record.check_metadata`
    parallel_tool_calls: bool | None = None
    # core/prompt_cache.py: slot affinity, and 24h pins of the whole prompt.
    prompt_cache_key: PromptCacheKey = None
    prompt_cache_retention: PromptCacheRetention = None


def store_of(request: Request) -> ResponseStore:
    return request.app.state.responses


# ----- input -------------------------------------------------------------------------------


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """This request's input as Responses items, each with an id (as `input_items` lists them)."""
    raw = body.input
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    out = []
    for item in items:
        item = {"type": "message", **item}
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        item.setdefault("id", new_id("msg_" if item["type"] == "message" else "item_"))
        out.append(item)
    return out


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses items -> OpenAI chat messages for the chat template."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f"input[{i}]: invalid role {role!r}", param="input")
            text = _text_of(item.get("content"), f"input[{i}].content")
            out.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            _require_strings(item, i, "call_id", "name")
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            if out and out[-1]["role"] == "assistant":  # calls of one turn: one message
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            _require_strings(item, i, "call_id")
            if item.get("output") is None:
                raise APIError(400, f"input[{i}]: a function_call_output needs 'output'", param="input")  # fmt: skip
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, f"input[{i}].output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise APIError(400, f"input[{i}]: unsupported item type {kind!r}", param="input")
    return out


def _require_strings(item: dict[str, Any], i: int, *keys: str) -> None:
    for key in keys:
        if not isinstance(item.get(key), str) or not item[key]:
            raise APIError(400, f"input[{i}]: a {item['type']} needs a string '{key}'", param="input")  # fmt: skip


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools (flat) as the chat API's `{"type", "function": {...}}`."""
    if not tools:
        return None
    out = []
    for tool in tools:
        if tool.get("type") != "function":
            raise APIError(400, f"unsupported tool type {tool.get('type')!r}", param="tools")
        spec = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        out.append({"type": "function", "function": spec})
    return out


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as the chat API's `response_format`."""
    fmt = (text or {}).get("format")
    if not fmt:
        return None
    if not isinstance(fmt, dict):
        raise APIError(400, "text.format must be an object", param="text.format")
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"schema": fmt.get("schema") or {}}}
    return {"type": fmt.get("type")}


# ----- output ------------------------------------------------------------------------------


def response_object(
    response_id: str, created: int, model: str, body: ResponsesRequest
) -> dict[str, Any]:
    """The response as first announced: in progress, no output yet."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is True,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": body.store,
        "temperature": body.temperature,
        # Echoed (and stored) as runner reads them: unknown keys would cost store room only.
        "text": echoed_text(body.text),
        "tool_choice": echoed_tool_choice(body.tool_choice),
        "tools": echoed_tools(body.tools),
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": None,
        "metadata": body.metadata or {},
    }


def tool_choice(raw: Any) -> Any:
    """Responses' `tool_choice` as the chat API's (named functions are flat here)."""
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"type": "function", "function": {"name": raw.get("name")}}
    raise APIError(
        400, "tool_choice must be none, auto, required or a function", param="tool_choice"
    )


async def save(
    request: Request,
    body: ResponsesRequest,
    response: dict[str, Any],
    history: list[dict[str, Any]],
    items: list[dict[str, Any]],
) -> None:
    """Store `response` (with its input and the conversation so far) when `store` is on;
    507 when the disk has no room for it (the answer is lost: it was asked to be stored)."""
    if not body.store:
        return
    record = {
        "response": response,
        "input_items": stored_items(items),
        "messages": [*history, assistant_message(response["output"])],
    }
    try:
        await asyncio.to_thread(store_of(request).put, response["id"], record)
    except StoreFull as exc:
        raise APIError(
            507,
            f"the response could not be stored: {exc}; free disk space or send store: false",
            "insufficient_storage",
        ) from exc


# ----- routes ------------------------------------------------------------------------------


async def create(request: Request) -> Response:
    raw = await read_json(request)
    check_metadata(raw.get("metadata") if isinstance(raw, dict) else None)
    body: ResponsesRequest = validated(ResponsesRequest, raw)
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        previous = await asyncio.to_thread(store_of(request).get, body.previous_response_id)
        if previous is None:
            raise APIError(
                404,
                f"Previous response with id '{body.previous_response_id}' not found.",
                "previous_response_not_found",
                param="previous_response_id",
            )
        history = previous["messages"]
    items = input_items(body)
    history = [*history, *chat_messages(items)]
    # Instructions are not carried over from a previous response (as in OpenAI's API).
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    fmt = response_format(body.text)
    fields = generation_fields(
        {"max_tokens": "max_output_tokens", "response_format": "text.format"},
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        response_format=fmt,
    )
    plan = chat_plan(
        chat_tools(body.tools),
        tool_choice(body.tool_choice),
        # Several calls in one answer only when asked for, as on the chat route.
        parallel=body.parallel_tool_calls is True,
        constrained=fmt is not None,
    )
    name = model_name(request, body.model)
    prompt_of = chat_prompt([*system, *history], plan, free_grammar=fmt is None)
    customize = steer(body.prompt_cache_key, body.prompt_cache_retention, plan.customize)
    gen = await start(request, name, prompt_of, fields, "", customize, dialect="responses")
    obj = response_object(new_id("resp_"), int(time.time()), body.model or name, body)

    async def store(response: dict[str, Any]) -> None:
        await save(request, body, response, history, items)

    if body.stream:
        cutoff = ShutdownCutoff(settings_of(request).shutdown_grace)
        events = response_events(gen, obj, plan.parser(), cutoff, store)
        return EngineStream(gen, events, cutoff)
    text, final = await collect(request, gen)
    check_final(final)
    result = finish(obj, final, output_items(plan.message(text)[0]))
    await store(result)
    return JSONResponse(result)


async def _stored(request: Request, response_id: str) -> dict[str, Any]:
    record = await asyncio.to_thread(store_of(request).get, response_id)
    if record is None:
        raise APIError(404, f"Response with id '{response_id}' not found.", "not_found")
    return record


async def retrieve(request: Request, response_id: str) -> dict[str, Any]:
    return (await _stored(request, response_id))["response"]


async def list_input_items(
    request: Request,
    response_id: str,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    after: str | None = None,
    before: str | None = None,
) -> dict[str, Any]:
    """One page of the input items, newest first unless `order=asc`; `after` / `before` are
    item ids (cursors)."""
    items = list((await _stored(request, response_id))["input_items"])
    if order == "desc":
        items.reverse()
    ids = [item.get("id") for item in items]
    start = ids.index(after) + 1 if after in ids else 0 if after is None else len(ids)
    end = ids.index(before) if before in ids else len(ids) if before is None else 0
    window = items[start:end]
    # Paging back (`before` alone) takes the items just before the cursor.
    page = window[-limit:] if before is not None and after is None else window[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(window) > limit,
    }


async def delete(request: Request, response_id: str) -> dict[str, Any]:
    if not await asyncio.to_thread(store_of(request).delete, response_id):
        raise APIError(404, f"Response with id '{response_id}' not found.", "not_found")
    return {"id": response_id, "object": "response.deleted", "deleted": True}


for _prefix in (*OPENAI_PREFIXES, ""):
    base = _prefix + "/responses"
    # `/responses` shares the prefixed handlers: documented (and fuzzed) once under those.
    documented = bool(_prefix)
    router.add_api_route(
        base,
        create,
        methods=["POST"],
        openapi_extra=json_body(ResponsesRequest),
        include_in_schema=documented,
    )
    for path, route, method in (
        ("/{response_id}", retrieve, "GET"),
        ("/{response_id}", delete, "DELETE"),
        ("/{response_id}/input_items", list_input_items, "GET"),
    ):
        router.add_api_route(base + path, route, methods=[method], include_in_schema=documented)
