"""Ollama's generation routes at the server root: `/api/chat`, `/api/generate`, `/api/embed`
and the older `/api/embeddings`. Model routes (`tags`, `ps`, `show`, ...) are in
`ollama/models.py`.

Thin translations: a body becomes chat messages (or a raw prompt) plus `GenerationFields`
and runs through `inference.start` like `/v1/chat/completions`, on the same prompt cache,
with tools through `chat/tools.py`. Streams are NDJSON, on by default (as in Ollama); the
answers (content, `thinking`, `tool_calls`, Ollama's counters) are built in
`ollama/stream.py`. Errors are `{"error": "..."}` (see `errors/renderers.py`).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from runner.api.core.chat_plan import ChatPlan
from runner.api.core.dialect_common import (
    chat_plan,
    chat_prompt,
    check_final,
    generation_fields,
    raw_prompt,
    read_json,
    rfc3339,
)
from runner.api.core.inference import (
    PromptBuilder,
    cancel_on_disconnect,
    collect,
    engine_of,
    hold_model,
    start,
    tokenize,
)
from runner.api.core.schemas import GenerationFields, json_body
from runner.api.core.sse import ShutdownCutoff
from runner.api.errors.table import APIError
from runner.api.ollama.schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    requested_model,
)
from runner.api.ollama.stream import (
    NdjsonStream,
    continued,
    conversation_tokens,
    counters,
    done,
    lines,
    piece,
    whole,
)
from runner.api.state import loader_of, settings_of
from runner.config import parse_duration
from runner.engine import FinishEvent
from runner.loader import ResidentModel

router = APIRouter(prefix="/api")

# Ollama `options` that map onto runner's sampling fields; `num_ctx` picks the load (see
# `context_size_of`); others (num_gpu, num_thread, mirostat...) are accepted and ignored, as
# Ollama ignores unknown ones.
_OPTIONS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "ignore_eos": "ignore_eos",  # llama-server's extra, as on the OpenAI routes
}
_RENAMES = {ours: f"options.{theirs}" for theirs, ours in _OPTIONS.items()}
_CONTEXT_SIZES = range(64, (1 << 20) + 1)  # what `_configure`'s context-size takes
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# ----- request pieces ----------------------------------------------------------------------


def parse_keep_alive(value: Any) -> float | None:
    """Seconds from Ollama's `keep_alive`: a number of seconds or a duration (`5m`, `1h30m`);
    0 unloads right after the request, any negative value keeps the model loaded forever."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise APIError(400, "keep_alive must be a duration or a number of seconds")
    try:
        return parse_duration(value)
    except ValueError:
        pass
    text = str(value).strip()
    sign, unsigned = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    parts = _GO_DURATION.findall(unsigned)
    if not parts or "".join(n + u for n, u in parts) != unsigned:
        raise APIError(400, f"invalid keep_alive {text[:64]!r}: use e.g. 5m, 1h30m, 0 or -1")
    seconds = sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)
    return -1.0 if seconds < 0 else seconds


def apply_keep_alive(request: Request, model: ResidentModel, seconds: float | None) -> None:
    """Set how long `model` stays loaded once idle, as Ollama does per request: the loader
    arms the idle timer with it when the last holder lets go (0: unload right away; -1:
    never). A request without keep_alive restores the configured default."""
    if seconds is None:
        configured = loader_of(request).model_config(model.entry, model.name).get("keep_alive")
        seconds = (
            parse_duration(configured)
            if configured is not None
            else settings_of(request).idle_timeout
        )
    model.keep_alive = seconds


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "options must be an object")
    return options


def context_size_of(body: dict[str, Any]) -> int | None:
    """Ollama's `options.num_ctx`: the context the model is loaded with, here the tokens of
    each slot (as each of Ollama's parallel sequences gets `num_ctx`). A size other than the
    configured one is another load of the model (Ollama reloads for it); past the model's
    trained context it is capped there, as configured sizes are."""
    value = _options(body).get("num_ctx")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON clients may send 4096.0
    if isinstance(value, bool) or not isinstance(value, int) or value not in _CONTEXT_SIZES:
        raise APIError(400, "options.num_ctx must be an integer between 64 and 1048576")
    return value


def fields_from(body: dict[str, Any]) -> GenerationFields:
    """GenerationFields from Ollama's `options` and `format`."""
    options = _options(body)
    values = {ours: options.get(theirs) for theirs, ours in _OPTIONS.items()}
    limit = values["max_tokens"]
    if isinstance(limit, int | float) and not isinstance(limit, bool) and limit < 0:
        values["max_tokens"] = -1  # -1 (no limit) and -2 (fill the context) both run to the end
    fmt = body.get("format")
    if fmt == "json":
        values["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        values["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt}}
    elif fmt not in (None, ""):
        raise APIError(400, 'format must be "json" or a JSON schema object')
    return generation_fields(_RENAMES, **values)


def _no_images(items: Any) -> None:
    if items:
        raise APIError(400, "images are not supported: the model has no vision projector")


def _messages(raw: Any) -> list[dict[str, Any]]:
    """Ollama chat messages -> OpenAI chat messages."""
    if not isinstance(raw, list):
        raise APIError(400, "messages must be a list")
    out = []
    for message in raw:
        if not isinstance(message, dict):
            raise APIError(400, "each message must be an object")
        role, content = message.get("role"), message.get("content", "")
        if role not in ("system", "user", "assistant", "tool"):
            raise APIError(400, f"invalid message role {role!r}")
        if not isinstance(content, str):
            raise APIError(400, "message content must be a string")
        _no_images(message.get("images"))
        converted: dict[str, Any] = {"role": role, "content": content}
        if message.get("tool_calls"):
            converted["tool_calls"] = _tool_calls(message["tool_calls"])
        if role == "tool" and message.get("tool_name"):
            converted["name"] = message["tool_name"]
        out.append(converted)
    return out


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """Ollama's `tool_calls` (arguments as an object) as OpenAI's (arguments as JSON text)."""
    if not isinstance(calls, list):
        raise APIError(400, "tool_calls must be a list")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIError(400, f"tool_calls[{i}] needs a function with a name")
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        call_id = call.get("id") or f"call_{i}"
        out.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return out


# ----- running --------------------------------------------------------------------------


async def _run(
    request: Request,
    body: dict[str, Any],
    prompt_of: PromptBuilder,
    fields: GenerationFields,
    key: str,
    plan: ChatPlan | None,
) -> Response:
    """Start, apply keep_alive, then stream NDJSON or answer once, as a chat `message` or a
    generate `response` (`key`). `plan` (None for raw prompts) splits tool calls and
    thinking out of the text and constrains forced calls."""
    started = time.perf_counter_ns()
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    name = requested_model(body)
    customize = plan.customize if plan is not None else None
    gen = await start(
        request, name, prompt_of, fields, "", customize, context_size_of(body), dialect="ollama"
    )
    load_ns = time.perf_counter_ns() - started
    apply_keep_alive(request, gen.model, keep_alive)

    def envelope(part: dict[str, Any]) -> dict[str, Any]:
        return {"model": name, "created_at": rfc3339(), **part}

    def tail(final: FinishEvent) -> dict[str, Any]:
        context = {"context": conversation_tokens(gen)} if key == "response" else {}
        return {**context, **counters(final, started, load_ns)}

    if body.get("stream", True) is not False:
        parser = plan.parser() if plan is not None else None
        cutoff = ShutdownCutoff(settings_of(request).shutdown_grace)
        return NdjsonStream(gen, lines(gen, key, parser, envelope, tail, cutoff), cutoff)
    text, final = await collect(request, gen)
    check_final(final)
    answer = whole(key, plan.message(text)[0], final) if plan is not None else piece(key, text)
    return JSONResponse(envelope({**answer, **done(final), **tail(final)}))


async def _load_only(request: Request, body: dict[str, Any], key: str) -> Response:
    """Ollama's empty request: load the model (keep_alive 0: unload it) and say so."""
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    async with hold_model(request, requested_model(body), context_size_of(body)) as model:
        apply_keep_alive(request, model, keep_alive)
        name = model.name
    reason = "unload" if keep_alive == 0 else "load"
    return JSONResponse(
        {
            "model": name,
            "created_at": rfc3339(),
            **piece(key),
            "done": True,
            "done_reason": reason,
        }
    )


def _think(body: dict[str, Any]) -> bool | None:
    """Ollama's `think`: true or false (gpt-oss's "low" / "medium" / "high" count as true)."""
    think = body.get("think")
    if think is None or isinstance(think, bool):
        return think
    if think in ("low", "medium", "high"):
        return True
    raise APIError(400, 'think must be true, false, "low", "medium" or "high"')


# ----- routes ------------------------------------------------------------------------------


@router.post("/chat", openapi_extra=json_body(OllamaChatRequest))
async def chat(request: Request) -> Response:
    """`tool_choice` (OpenAI's values) is a runner extension: Ollama has none, and lets the
    model decide; "required" or a named function forces a call."""
    body = await read_json(request)
    requested_model(body)
    messages = _messages(body.get("messages") or [])
    if not messages:
        return await _load_only(request, body, "message")
    fields = fields_from(body)
    constrained = fields.response_format is not None
    plan = chat_plan(body.get("tools"), body.get("tool_choice"), constrained=constrained)
    prompt_of = chat_prompt(messages, plan, not constrained, _think(body))
    return await _run(request, body, prompt_of, fields, "message", plan)


@router.post("/generate", openapi_extra=json_body(OllamaGenerateRequest))
async def generate(request: Request) -> Response:
    body = await read_json(request)
    requested_model(body)
    _no_images(body.get("images"))
    for unsupported in ("template", "suffix"):
        if body.get(unsupported):
            raise APIError(400, f"{unsupported} is not supported by this server")
    prompt, system = body.get("prompt") or "", body.get("system")
    if not isinstance(prompt, str) or not isinstance(system, str | None):
        raise APIError(400, "prompt and system must be strings")
    if not prompt:
        return await _load_only(request, body, "response")
    fields = fields_from(body)
    context = body.get("context")
    if body.get("raw"):
        prompt_of = raw_prompt(prompt)
        prompt_of = continued(context, prompt_of) if context is not None else prompt_of
        return await _run(request, body, prompt_of, fields, "response", None)
    messages = [{"role": "system", "content": system}] if system else []
    plan = chat_plan(None)
    free = fields.response_format is None
    messages.append({"role": "user", "content": prompt})
    prompt_of = chat_prompt(messages, plan, free, _think(body))
    prompt_of = continued(context, prompt_of) if context is not None else prompt_of
    return await _run(request, body, prompt_of, fields, "response", plan)


async def _embed(request: Request, body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    started = time.perf_counter_ns()
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    if body.get("dimensions"):
        raise APIError(400, "dimensions is not supported (the model's size is used)")
    async with hold_model(request, requested_model(body), context_size_of(body)) as model:
        load_ns = time.perf_counter_ns() - started
        apply_keep_alive(request, model, keep_alive)
        engine = engine_of(model)
        limit = engine.config.ctx_per_slot
        inputs = []
        for text in texts:
            tokens = await tokenize(engine, text)
            if len(tokens) > limit:
                if body.get("truncate") is False:
                    raise APIError(400, f"input of {len(tokens)} tokens exceeds the context")
                tokens = tokens[:limit]
            inputs.append(tokens)
        result = await cancel_on_disconnect(request, engine.embed(inputs))
        name = model.name
    return {
        "model": name,
        "embeddings": result.vectors,
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": load_ns,
        "prompt_eval_count": sum(result.token_counts),
    }


@router.post("/embed", openapi_extra=json_body(OllamaEmbedRequest))
async def embed(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input must be a string or a non-empty list of strings")
    return await _embed(request, body, texts)


@router.post("/embeddings", openapi_extra=json_body(OllamaEmbeddingsRequest))
async def embeddings(request: Request) -> dict[str, Any]:
    """The older single-prompt route: `{model, prompt}` -> `{embedding}`."""
    body = await read_json(request)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise APIError(400, "prompt must be a string")
    result = await _embed(request, body, [prompt])
    return {"embedding": result["embeddings"][0]}
