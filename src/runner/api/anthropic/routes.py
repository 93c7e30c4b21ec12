"""Anthropic's Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`, also under
`/anthropic` (Anthropic clients take the server root, or `/anthropic`, as their base URL).

A thin translation onto the OpenAI chat path (`inference.start`, the model's chat template,
the shared prompt cache). `cache_control` breakpoints pin prefixes of the prompt
(`anthropic/caching.py`); `usage.cache_read_input_tokens` is the reused prefix (`cache_n`),
`cache_creation_input_tokens` what this request computed up to its breakpoints, and
`input_tokens` the rest of the prompt, as in Anthropic's own accounting. Tools go through `chat/tools.py` like the OpenAI route's; answers and
streams (Anthropic's event sequence) are in `anthropic/stream.py`. Errors take Anthropic's shape
(`errors/renderers.py`); `x-api-key` is accepted as the API key (`http/access.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from runner.api.anthropic.caching import mark, with_breakpoints
from runner.api.anthropic.stream import (
    content_blocks,
    message_events,
    message_object,
    stop_reason,
    usage,
)
from runner.api.core.chat_plan import ChatPlan
from runner.api.core.dialect_common import (
    chat_plan,
    chat_prompt,
    check_final,
    generation_fields,
    read_json,
    text_of,
    validated,
    whole_calls,
)
from runner.api.core.inference import (
    PromptBuilder,
    collect,
    engine_of,
    hold_model,
    start,
)
from runner.api.core.schemas import (
    INT32_MAX,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    json_body,
    model_field,
)
from runner.api.core.sse import EngineStream, ShutdownCutoff
from runner.api.errors.table import APIError
from runner.api.state import settings_of
from runner.engine import Engine
from runner.loader import ResidentModel

PREFIXES = ("", "/anthropic")

router = APIRouter()


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = model_field(min_length=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
    # Anthropic's ranges (temperature is 0-1 there, not OpenAI's 0-2).
    temperature: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    metadata: dict[str, Any] | None = None
    stream: bool = False


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input", {}))},
    }


def chat_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """Anthropic `system` + `messages` -> OpenAI chat messages for the chat template."""
    out: list[dict[str, Any]] = []
    system = text_of(body.system, "system")
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in message.content:
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise APIError(400, f"messages.{i}.content: a text block needs a string 'text'")
                texts.append(block["text"])
            elif kind == "tool_use" and message.role == "assistant":
                calls.append(_tool_call(block))
            elif kind == "tool_result" and message.role == "user":
                result = text_of(block.get("content"), f"messages.{i}.tool_result.content")
                out.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": result}
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue  # earlier reasoning is not replayed to the model
            else:
                raise APIError(400, f"messages.{i}.content: unsupported block type {kind!r}")
        if texts or calls or message.role == "assistant":
            converted: dict[str, Any] = {"role": message.role, "content": "\n".join(texts)}
            if calls:
                converted["tool_calls"] = calls
            out.append(converted)
    return out


def _tools(body: CountTokensRequest) -> list[dict[str, Any]] | None:
    """Anthropic tool definitions as OpenAI function tools (for the chat template)."""
    if not body.tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": tool.get("name"),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema", {}),
            },
        }
        for tool in body.tools
    ]


def _counting(builder: PromptBuilder, prompt_n: list[int]) -> PromptBuilder:
    """`builder`, also recording the prompt's length (message_start reports it)."""

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        tokens, stops = await builder(model, engine)
        prompt_n[0] = len(tokens)
        return tokens, stops

    return prompt_of


def _tool_choice(raw: dict[str, Any] | None) -> tuple[Any, bool]:
    """Anthropic's `tool_choice` as OpenAI's, and whether parallel calls are allowed: only
    when asked for (`disable_parallel_tool_use: false`), as the OpenAI route allows them
    only with `parallel_tool_calls: true` (llama-server's default: one call per answer)."""
    if raw is None:
        return None, False
    parallel = raw.get("disable_parallel_tool_use") is False
    kind = raw.get("type")
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": raw.get("name")}}, parallel
    raise APIError(400, f"tool_choice.type must be auto, any, tool or none, not {kind!r}")


def _plan(body: CountTokensRequest) -> ChatPlan:
    choice, parallel = _tool_choice(body.tool_choice)
    return chat_plan(_tools(body), choice, parallel)


async def messages(request: Request) -> Response:
    body: MessagesRequest = validated(MessagesRequest, await read_json(request))
    if any(len(s) > MAX_STOP_LENGTH for s in body.stop_sequences or []):
        raise APIError(400, f"stop_sequences may be at most {MAX_STOP_LENGTH} characters long")
    fields = generation_fields(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=body.stop_sequences,
    )
    plan = _plan(body)
    marked, markers, points = mark(body, settings_of(request).cache_pin_ttl)
    prompt = chat_prompt(chat_messages(body), plan)
    if markers:
        tools = _plan(marked).tools
        prompt = with_breakpoints(prompt, chat_messages(marked), tools, markers, points)
    prompt_n = [0]
    builder = _counting(prompt, prompt_n)
    customize = points.customize(plan.customize)
    gen = await start(request, body.model, builder, fields, "msg_", customize, dialect="anthropic")
    if body.stream:
        cutoff = ShutdownCutoff(settings_of(request).shutdown_grace)
        parser = plan.parser()
        stops = body.stop_sequences
        events = message_events(gen, body.model, prompt_n, parser, cutoff, stops, points)
        return EngineStream(gen, events, cutoff)
    text, final = await collect(request, gen)
    check_final(final)
    message, has_calls = plan.message(text)
    if has_calls:
        message["tool_calls"] = whole_calls(message["tool_calls"], final)
    result = message_object(gen, body.model, content_blocks(message))
    reason, sequence = stop_reason(final, has_calls, body.stop_sequences)
    result["stop_reason"], result["stop_sequence"] = reason, sequence
    result["usage"] = usage(final, points)
    result["timings"] = final.timings.to_dict()
    return JSONResponse(result)


async def count_tokens(request: Request) -> dict[str, int]:
    body: CountTokensRequest = validated(CountTokensRequest, await read_json(request))
    builder = chat_prompt(chat_messages(body), _plan(body))
    async with hold_model(request, body.model) as model:
        tokens, _ = await builder(model, engine_of(model))
    return {"input_tokens": len(tokens)}


for _prefix in PREFIXES:
    router.add_api_route(
        _prefix + "/v1/messages",
        messages,
        methods=["POST"],
        openapi_extra=json_body(MessagesRequest),
    )
    router.add_api_route(
        _prefix + "/v1/messages/count_tokens",
        count_tokens,
        methods=["POST"],
        openapi_extra=json_body(CountTokensRequest),
    )
