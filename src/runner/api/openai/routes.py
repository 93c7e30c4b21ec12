"""OpenAI-compatible routes: chat/completions, completions, embeddings, models.

One router, mounted by `app.py` under each of `OPENAI_PREFIXES` (DMR's spellings).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from runner.api.core.inference import (
    INLINE_LIMIT,
    Choice,
    Generation,
    cancel_on_disconnect,
    collect,
    engine_of,
    finish_error,
    hold_model,
    model_name,
    preload_only,
    start,
    tokenize,
    tokenize_prompt,
    usage,
)
from runner.api.core.logprobs import chat_entries, completion_object
from runner.api.core.prompt_cache import steer
from runner.api.core.schemas import ModelPath, json_body
from runner.api.errors.table import APIError
from runner.api.http.bodies import parsed
from runner.api.openai.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from runner.api.openai.streaming import chat_stream, completion_stream
from runner.api.state import settings_of, store_of
from runner.chat import content_length
from runner.config import format_size
from runner.engine import Engine
from runner.loader import ResidentModel
from runner.store import ModelEntry, format_params

router = APIRouter()
# Bodies parsed (and validated) off the event loop when large; see http/bodies.py.
ChatCompletionBody = Annotated[ChatCompletionRequest, Depends(parsed(ChatCompletionRequest))]
CompletionBody = Annotated[CompletionRequest, Depends(parsed(CompletionRequest))]
EmbeddingBody = Annotated[EmbeddingRequest, Depends(parsed(EmbeddingRequest))]


async def _preload(request: Request, name: str) -> JSONResponse:
    async with hold_model(request, name):
        return JSONResponse({})


def _result(
    gen: Generation, obj: str, make_choice: Callable[[Choice], dict[str, Any]]
) -> dict[str, Any]:
    """The whole response: one entry per choice (`n`); the prompt was computed once, by the
    first choice, whose timings the response carries."""
    finals = []
    for choice in gen.choices:
        assert choice.final is not None
        err = finish_error(choice.final)
        if err is not None:
            raise err
        if choice.final.finish_reason == "cancelled":  # the client is gone
            raise APIError(499, "the request was cancelled", "cancelled")
        finals.append(choice.final)
    choices = [
        {"index": i, **make_choice(c), "finish_reason": f.finish_reason}
        for i, (c, f) in enumerate(zip(gen.choices, finals, strict=True))
    ]
    return {
        **gen.envelope(obj, choices),
        "usage": usage(*finals),
        "timings": finals[0].timings.to_dict(),
    }


# ----- chat --------------------------------------------------------------------------------


@router.post("/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
async def chat_completions(request: Request, body: ChatCompletionBody) -> Response:
    name = model_name(request, body.model)
    if preload_only(request):
        return await _preload(request, name)
    plan = body.chat_plan()
    own_grammar = body.grammar or body.json_schema is not None
    free_grammar = not own_grammar and body.response_format in (None, {"type": "text"})

    def render(model: ResidentModel, engine: Engine) -> list[int]:
        if model.template is None:
            raise APIError(500, f"model {model.name} has no chat template", "no_chat_template")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        engine.check_prompt_size(content_length(messages))  # before the template's work
        text = plan.render(model.template, messages, body.chat_template_kwargs, free_grammar)
        # The rendered text carries the template's special tokens (<start_of_turn>...) and
        # no BOS (templates' bos_token is stripped): the tokenizer adds BOS and parses them.
        return engine.tokenize_prompt(text)

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        # Many messages cost as much as long ones (dumping them, the template's loop).
        size = sum(len(str(m.content or "")) + 64 for m in body.messages)
        if size > INLINE_LIMIT or body.tools:
            tokens = await asyncio.to_thread(render, model, engine)
        else:
            tokens = render(model, engine)
        stops = model.template.stop_strings if model.template else ()
        return tokens, stops

    customize = steer(body.prompt_cache_key, body.prompt_cache_retention, plan.customize)
    gen = await start(request, name, prompt_of, body, "chatcmpl-", customize, dialect="openai")
    if body.stream:
        grace = settings_of(request).shutdown_grace
        return chat_stream(gen, body.include_usage, grace, plan.parser, bool(body.logprobs))
    await collect(request, gen)
    piece = engine_of(gen.model).piece_bytes
    with_calls: set[int] = set()

    def chat_choice(choice: Choice) -> dict[str, Any]:
        message, has_calls = plan.message(choice.text)
        if has_calls:
            with_calls.add(id(choice))
        logprobs = None
        if body.logprobs:
            logprobs = {"content": chat_entries(choice.logprobs, piece)}
        return {"message": message, "logprobs": logprobs}

    result = _result(gen, "chat.completion", chat_choice)
    for entry, choice in zip(result["choices"], gen.choices, strict=True):
        if id(choice) in with_calls and entry["finish_reason"] == "stop":
            entry["finish_reason"] = "tool_calls"
    return JSONResponse(result)


# ----- text completions --------------------------------------------------------------------


@router.post("/completions", openapi_extra=json_body(CompletionRequest))
async def completions(request: Request, body: CompletionBody) -> Response:
    name = model_name(request, body.model)
    if preload_only(request):
        return await _preload(request, name)

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        if isinstance(body.prompt, str):
            return await tokenize_prompt(engine, body.prompt), ()
        return list(body.prompt), ()

    gen = await start(request, name, prompt_of, body, "cmpl-", dialect="openai")
    if body.stream:
        grace = settings_of(request).shutdown_grace
        return completion_stream(gen, body.include_usage, grace, body.logprobs is not None)
    await collect(request, gen)
    piece = engine_of(gen.model).piece_bytes

    def text_choice(choice: Choice) -> dict[str, Any]:
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_object(choice.logprobs, piece)
        return {"text": choice.text, "logprobs": logprobs}

    return JSONResponse(_result(gen, "text_completion", text_choice))


# ----- embeddings --------------------------------------------------------------------------


def _encode(vector: list[float], fmt: str | None) -> list[float] | str:
    if fmt == "base64":  # OpenAI: little-endian float32, base64
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@router.post("/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request, body: EmbeddingBody) -> Response:
    name = model_name(request, body.model)
    if preload_only(request):
        return await _preload(request, name)
    async with hold_model(request, name) as model:
        engine = engine_of(model)
        inputs = [
            await tokenize(engine, item) if isinstance(item, str) else item for item in body.items()
        ]
        result = await cancel_on_disconnect(request, engine.embed(inputs))
    n_tokens = sum(result.token_counts)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, body.encoding_format)}
        for i, vector in enumerate(result.vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            "timings": result.timings.to_dict(),
        }
    )


# ----- models ------------------------------------------------------------------------------


def model_item(tag: str, entry: ModelEntry) -> dict[str, Any]:
    """OpenAI's model object plus DMR's `dmr` block."""
    meta = entry.metadata
    return {
        "id": tag,
        "object": "model",
        "created": entry.created,
        "owned_by": tag.split("/", 1)[0] if "/" in tag else "local",
        "dmr": {
            "context_window": meta.context_length,
            "architecture": meta.architecture,
            "parameters": format_params(meta.parameter_count),
            "quantization": meta.quantization,
            "size": format_size(entry.size),
        },
    }


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    entries = await asyncio.to_thread(store_of(request).list)
    data = [model_item(tag, e) for e in entries for tag in (e.tags or [e.name])]
    return {"object": "list", "data": data}


@router.get("/models/{name:path}")
async def get_model(name: ModelPath, request: Request) -> dict[str, Any]:
    store = store_of(request)
    entry = await asyncio.to_thread(store.get, name)
    tag = await asyncio.to_thread(store.resolve, name)
    return model_item(tag, entry)
