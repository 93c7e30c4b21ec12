"""What the Ollama, Anthropic and Responses dialects share: validated generation fields, the
tools plan and chat prompt builder, body reading and small conversions.

Every dialect translates its body into chat messages plus `GenerationFields` and goes through
`inference.start`, the same path as `/v1/chat/completions`: one loader, one engine, one
prompt cache, so a prefix cached through one dialect is a hit through another.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from runner.api.core.chat_plan import ChatPlan, tool_error
from runner.api.core.inference import INLINE_LIMIT, PromptBuilder, finish_error
from runner.api.core.schemas import GenerationFields
from runner.api.errors.table import APIError
from runner.api.http.bodies import loads
from runner.chat import content_length
from runner.chat.tools import ToolError, parse_tool_choice, parse_tools
from runner.engine import Engine, FinishEvent
from runner.loader import ResidentModel

# DMR's spellings of OpenAI's `/v1`: chat completions and Responses are mounted under each.
OPENAI_PREFIXES = ("/engines/llama.cpp/v1", "/engines/v1", "/v1")
# `/rerank` as llama-server (root, /v1) and DMR (/engines/..., with and without /v1) serve it.
RERANK_PREFIXES = ("", "/engines", "/engines/llama.cpp", *OPENAI_PREFIXES)


def describe_validation(exc: ValidationError, renames: Mapping[str, str] | None = None) -> str:
    """One line naming each bad field (first five), in the dialect's own field names."""
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        where = (renames or {}).get(where, where)
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "invalid request: " + "; ".join(problems)


def validated(model: type[BaseModel], data: Any, renames: Mapping[str, str] | None = None) -> Any:
    """`model.model_validate(data)`, with a failure as a 400 APIError (never a 422/500)."""
    if not isinstance(data, Mapping):
        raise APIError(400, "the request body must be a JSON object", "invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise APIError(400, describe_validation(exc, renames), "invalid_request") from None


def generation_fields(renames: Mapping[str, str] | None = None, **values: Any) -> GenerationFields:
    """Engine-facing fields (OpenAI names, OpenAI ranges) built from a dialect's values;
    Nones are dropped so defaults apply. `renames` maps our names back to the dialect's in
    error messages (`max_tokens` -> `options.num_predict`)."""
    clean = {k: v for k, v in values.items() if v is not None}
    return validated(GenerationFields, clean, renames)


def chat_plan(
    tools: list[dict[str, Any]] | None,
    tool_choice: Any = None,
    parallel: bool = False,
    constrained: bool = False,
) -> ChatPlan:
    """The tools plan (`core.chat_plan.ChatPlan`) from OpenAI-shaped `tools` / `tool_choice`, as
    each dialect converts its own; 400 for bad tools. `constrained`: the request has its own
    output format, which a forced call cannot be combined with."""
    try:
        specs = parse_tools(tools or None)
        choice = parse_tool_choice(tool_choice, specs)
    except ToolError as exc:
        raise tool_error(exc) from None
    if choice.forced and constrained:
        raise APIError(
            400,
            "a forced tool call cannot be combined with a response format",
            "invalid_request_error",
            param="tool_choice",
        )
    return ChatPlan(specs, choice, parallel=parallel)


def chat_prompt(
    messages: Sequence[Mapping[str, Any]],
    plan: ChatPlan,
    free_grammar: bool = True,
    think: bool | None = None,
) -> PromptBuilder:
    """The prompt builder for chat `messages` (OpenAI message dicts), rendered through the
    model's chat template by `plan` exactly as the OpenAI chat route renders them (so the
    prompt, and its cache entry, is the same whichever dialect sent it). `free_grammar` is
    False when the request constrains its output itself. `think` (Ollama's) reaches the
    template as `enable_thinking`; asking a model that cannot think to think is a 400."""
    messages = list(messages)
    extra = None if think is None else {"enable_thinking": think}

    def render(model: ResidentModel, engine: Engine) -> list[int]:
        if model.template is None:
            raise APIError(500, f"model {model.name} has no chat template", "no_chat_template")
        if think and not thinks(model.template.source):
            raise APIError(400, f'"{model.name}" does not support thinking', "no_thinking")
        engine.check_prompt_size(content_length(messages))  # before the template's work
        text = plan.render(model.template, messages, extra, free_grammar)
        # The template emits its special tokens and no BOS: the tokenizer adds BOS.
        return engine.tokenize_prompt(text)

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        size = sum(len(str(m.get("content") or "")) for m in messages)
        if size > INLINE_LIMIT or plan.tools:
            tokens = await asyncio.to_thread(render, model, engine)
        else:
            tokens = render(model, engine)
        return tokens, model.template.stop_strings if model.template else ()

    return prompt_of


def parse_arguments(arguments: str) -> Any:
    """A call's arguments (JSON text) as the object Ollama and Anthropic send; text that is
    not JSON (a model that broke off mid-call) is kept under `"arguments"`."""
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"arguments": arguments}


def whole_calls(calls: list[dict[str, Any]], final: FinishEvent) -> list[dict[str, Any]]:
    """OpenAI-shaped `calls` without the last one when the token limit cut it before its
    arguments were a whole JSON object: Anthropic's `input` and Ollama's `arguments` are
    objects, and any object in place of a half-written one (`{}`, or the text wrapped) would
    be a call the model never made. The stop reason says the answer was cut."""
    if final.finish_reason != "length" or not calls:
        return calls
    try:
        whole = isinstance(json.loads(calls[-1]["function"]["arguments"]), dict)
    except ValueError:
        whole = False
    return calls if whole else calls[:-1]


def raw_prompt(text: str) -> PromptBuilder:
    """A prompt builder for text sent as-is (no template), BOS added by the tokenizer."""

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        if len(text) > INLINE_LIMIT:
            tokens = await asyncio.to_thread(engine.tokenize_prompt, text)
        else:
            tokens = engine.tokenize_prompt(text)
        return tokens, ()

    return prompt_of


def check_final(final: FinishEvent) -> None:
    """Raise the error of a request the engine ended in error or cancelled."""
    exc = finish_error(final)
    if exc is not None:
        raise exc
    if final.finish_reason == "cancelled":  # the client is gone; the answer goes nowhere
        raise APIError(499, "the request was cancelled", "cancelled")


def text_of(content: Any, where: str) -> str:
    """The text of a content field that is a string or a list of `{"type": "text"}` blocks
    (as Anthropic and Responses send them); other block types are a 400."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where} must be a string or a list of blocks", "invalid_request")
    parts = []
    for block in content:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind not in ("text", "input_text", "output_text"):
            raise APIError(
                400, f"{where}: unsupported content block type {kind!r}", "invalid_request"
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise APIError(400, f"{where}: a text block needs a string 'text'", "invalid_request")
        parts.append(text)
    return "\n".join(parts)


async def read_json(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object body; 400 for an invalid or non-object body, and for an
    empty one unless `allow_empty` (then no body at all reads as `{}`)."""
    raw = await request.body()
    if not raw.strip():
        if allow_empty and not raw:  # no body at all; blanks alone are not JSON
            return {}
        raise APIError(400, "the request body is empty; send a JSON object", "invalid_request")
    try:
        body = await loads(raw)  # off the event loop when large
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_request")
    return body


def rfc3339(ts: float | None = None) -> str:
    """A UTC timestamp as RFC 3339 with milliseconds (`2026-12-01T14:51:12.123Z`)."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def thinks(template_source: str) -> bool:
    """Whether a chat template makes a model that reasons (it writes `<think>`)."""
    return "<think>" in template_source
