"""Ollama's generation routes at the server root: `/api/chat`, `/api/generate`, `/api/embed`
and the older `/api/embeddings`. Model routes (`tags`, `ps`, `show`, ...) are in
`ollama_models.py`.

Thin translations: a body becomes chat messages (or a raw prompt) plus `GenerationFields`
and runs through `inference.start` like `/v1/chat/completions`, on the same prompt cache.
Streams are NDJSON, on by default (as in Ollama). The last object carries Ollama's counters
in nanoseconds (`prompt_eval_count` is the prompt tokens computed, `timings.cache_n` the ones
reused) plus runner's `timings`. Errors are `{"error": "..."}` (see `dialect_errors.py`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from runner.config import parse_duration
from runner.engine import FinishEvent, TokenEvent
from runner.loader import ResidentModel

from .dialect_common import (
    chat_prompt,
    check_final,
    generation_fields,
    raw_prompt,
    read_json,
    rfc3339,
)
from .dialect_errors import ollama_body, stream_failure
from .errors import APIError
from .inference import Generation, PromptBuilder, collect, engine_of, hold_model, start, tokenize
from .ollama_schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
)
from .schemas import GenerationFields, json_body
from .state import loader_of, settings_of

router = APIRouter(prefix="/api")

# Ollama `options` that map onto runner's sampling fields; others (num_ctx, num_gpu,
# num_thread, mirostat...) are accepted and ignored, as Ollama ignores unknown ones.
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
}
_RENAMES = {ours: f"options.{theirs}" for theirs, ours in _OPTIONS.items()}
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# ----- request pieces ----------------------------------------------------------------------


def _model_name(body: dict[str, Any]) -> str:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise APIError(400, "model is required", "invalid_request")
    return name.strip()


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
        configured = loader_of(request).model_config(model.entry).get("keep_alive")
        seconds = (
            parse_duration(configured)
            if configured is not None
            else settings_of(request).idle_timeout
        )
    model.keep_alive = seconds


def fields_from(body: dict[str, Any]) -> GenerationFields:
    """GenerationFields from Ollama's `options` and `format`."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "options must be an object")
    values = {ours: options.get(theirs) for theirs, ours in _OPTIONS.items()}
    if values["max_tokens"] is not None and values["max_tokens"] < 0:
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


def _no_thinking(body: dict[str, Any]) -> None:
    if body.get("think") not in (None, False):
        raise APIError(400, f"{body.get('model')!r} does not support thinking")


# ----- responses ---------------------------------------------------------------------------


def counters(final: FinishEvent, started_ns: int, load_ns: int) -> dict[str, Any]:
    """Ollama's counters (nanoseconds) plus runner's `timings`."""
    timings = final.timings
    return {
        "total_duration": time.perf_counter_ns() - started_ns,
        "load_duration": load_ns,
        "prompt_eval_count": timings.prompt_n,
        "prompt_eval_duration": int(timings.prompt_ms * 1e6),
        "eval_count": final.completion_tokens,
        "eval_duration": int(timings.predicted_ms * 1e6),
        "timings": timings.to_dict(),
    }


class NdjsonStream(StreamingResponse):
    """An NDJSON response that owns a `Generation` and always releases it; a client that
    hangs up cancels the iteration, which cancels the engine request."""

    def __init__(self, gen: Generation, lines: AsyncIterator[bytes]) -> None:
        super().__init__(lines, media_type="application/x-ndjson")
        self.gen = gen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.gen.close()


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


Piece = Callable[[str], dict[str, Any]]
Last = Callable[[FinishEvent], dict[str, Any]]


async def _lines(gen: Generation, piece: Piece, last: Last) -> AsyncIterator[bytes]:
    final: FinishEvent | None = None
    async for event in gen.handle:
        if isinstance(event, TokenEvent):
            if event.text:
                yield _line(piece(event.text))
            continue
        final = event
    early, error = stream_failure(final)
    if error is not None:
        yield _line(ollama_body(error))
    if early:
        return
    assert final is not None
    yield _line(last(final))


async def _run(
    request: Request,
    body: dict[str, Any],
    prompt_of: PromptBuilder,
    fields: GenerationFields,
    shape: Callable[[str, bool, FinishEvent | None], dict[str, Any]],
) -> Response:
    """Start, apply keep_alive, then stream NDJSON or answer once. `shape(text, done,
    final)` is the dialect object (chat `message` or generate `response`)."""
    started = time.perf_counter_ns()
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    gen = await start(request, _model_name(body), prompt_of, fields, "")
    load_ns = time.perf_counter_ns() - started
    apply_keep_alive(request, gen.model, keep_alive)

    def last(final: FinishEvent) -> dict[str, Any]:
        return {**shape("", True, final), **counters(final, started, load_ns)}

    if body.get("stream", True) is not False:
        return NdjsonStream(gen, _lines(gen, lambda text: shape(text, False, None), last))
    text, final = await collect(request, gen)
    check_final(final)
    return JSONResponse({**shape(text, True, final), **counters(final, started, load_ns)})


async def _load_only(request: Request, body: dict[str, Any], shape: dict[str, Any]) -> Response:
    """Ollama's empty request: load the model (keep_alive 0: unload it) and say so."""
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    async with hold_model(request, _model_name(body)) as model:
        apply_keep_alive(request, model, keep_alive)
        name = model.name
    reason = "unload" if keep_alive == 0 else "load"
    return JSONResponse(
        {"model": name, "created_at": rfc3339(), **shape, "done": True, "done_reason": reason}
    )


def _done(final: FinishEvent | None) -> dict[str, Any]:
    if final is None:
        return {"done": False}
    return {"done": True, "done_reason": final.finish_reason}


# ----- routes ------------------------------------------------------------------------------


@router.post("/chat", openapi_extra=json_body(OllamaChatRequest))
async def chat(request: Request) -> Response:
    body = await read_json(request)
    name = _model_name(body)
    _no_thinking(body)
    messages = _messages(body.get("messages") or [])
    if not messages:
        return await _load_only(request, body, {"message": {"role": "assistant", "content": ""}})
    tools = body.get("tools") or None
    fields = fields_from(body)

    def shape(text: str, done: bool, final: FinishEvent | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"model": name, "created_at": rfc3339(), "message": message, **_done(final)}

    return await _run(request, body, chat_prompt(messages, tools), fields, shape)


@router.post("/generate", openapi_extra=json_body(OllamaGenerateRequest))
async def generate(request: Request) -> Response:
    body = await read_json(request)
    name = _model_name(body)
    _no_thinking(body)
    _no_images(body.get("images"))
    for unsupported in ("template", "suffix", "context"):
        if body.get(unsupported):
            raise APIError(400, f"{unsupported} is not supported by this server")
    prompt, system = body.get("prompt") or "", body.get("system")
    if not isinstance(prompt, str) or not isinstance(system, str | None):
        raise APIError(400, "prompt and system must be strings")
    if not prompt:
        return await _load_only(request, body, {"response": ""})
    fields = fields_from(body)
    if body.get("raw"):
        prompt_of = raw_prompt(prompt)
    else:
        messages = [{"role": "system", "content": system}] if system else []
        prompt_of = chat_prompt([*messages, {"role": "user", "content": prompt}])

    def shape(text: str, done: bool, final: FinishEvent | None) -> dict[str, Any]:
        return {"model": name, "created_at": rfc3339(), "response": text, **_done(final)}

    return await _run(request, body, prompt_of, fields, shape)


async def _embed(request: Request, body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    started = time.perf_counter_ns()
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    if body.get("dimensions"):
        raise APIError(400, "dimensions is not supported (the model's size is used)")
    async with hold_model(request, _model_name(body)) as model:
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
        results = await engine.embed(inputs)
        name = model.name
    return {
        "model": name,
        "embeddings": [vector for vector, _ in results],
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": load_ns,
        "prompt_eval_count": sum(n for _, n in results),
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
