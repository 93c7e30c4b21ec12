"""OpenAI-compatible routes: chat/completions, completions, embeddings, models.

One router, mounted by `app.py` under each of `PREFIXES` (DMR's spellings).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from runner.config import format_size
from runner.engine import Engine
from runner.loader import ResidentModel
from runner.store import ModelEntry, format_params

from .bodies import parsed
from .chat_output import ChatPlan
from .errors import APIError
from .inference import (
    INLINE_LIMIT,
    SYSTEM_FINGERPRINT,
    Generation,
    collect,
    engine_of,
    finish_error,
    hold_model,
    model_name,
    preload_only,
    start,
    tokenize,
    usage,
)
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, json_body
from .state import settings_of, store_of
from .streaming import chat_stream, completion_stream

PREFIXES = ("/engines/llama.cpp/v1", "/engines/v1", "/v1")

router = APIRouter()
# Bodies parsed (and validated) off the event loop when large; see bodies.py.
ChatCompletionBody = Annotated[ChatCompletionRequest, Depends(parsed(ChatCompletionRequest))]
CompletionBody = Annotated[CompletionRequest, Depends(parsed(CompletionRequest))]
EmbeddingBody = Annotated[EmbeddingRequest, Depends(parsed(EmbeddingRequest))]


async def _preload(request: Request, name: str) -> JSONResponse:
    async with hold_model(request, name):
        return JSONResponse({})


def _result(gen: Generation, final: Any, obj: str, choice: dict[str, Any]) -> dict[str, Any]:
    err = finish_error(final)
    if err is not None:
        raise err
    if final.finish_reason == "cancelled":  # the client is gone; this answer goes nowhere
        raise APIError(499, "the request was cancelled", "cancelled")
    choice = {"index": 0, **choice, "finish_reason": final.finish_reason}
    return {
        "id": gen.id,
        "object": obj,
        "created": gen.created,
        "model": gen.model.name,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": usage(final),
        "timings": final.timings.to_dict(),
    }


# ----- chat --------------------------------------------------------------------------------


@router.post("/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
async def chat_completions(request: Request, body: ChatCompletionBody) -> Response:
    name = model_name(request, body.model)
    if preload_only(request):
        return await _preload(request, name)
    plan = ChatPlan.from_body(body)
    own_grammar = body.grammar or body.json_schema is not None
    free_grammar = not own_grammar and body.response_format in (None, {"type": "text"})

    def render(model: ResidentModel, engine: Engine) -> list[int]:
        if model.template is None:
            raise APIError(500, f"model {model.name} has no chat template", "no_chat_template")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        text = plan.render(model.template, messages, body.chat_template_kwargs, free_grammar)
        # The rendered text carries the template's special tokens (<start_of_turn>...) and
        # no BOS (templates' bos_token is stripped): the tokenizer adds BOS and parses them.
        return engine.tokenize(text, add_special=True, parse_special=True)

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        # Many messages cost as much as long ones (dumping them, the template's loop).
        size = sum(len(str(m.content or "")) + 64 for m in body.messages)
        if size > INLINE_LIMIT or body.tools:
            tokens = await asyncio.to_thread(render, model, engine)
        else:
            tokens = render(model, engine)
        stops = model.template.stop_strings if model.template else ()
        return tokens, stops

    gen = await start(request, name, prompt_of, body, "chatcmpl-", plan.customize)
    if body.stream:
        grace = settings_of(request).shutdown_grace
        return chat_stream(gen, body.include_usage, grace, plan.parser())
    text, final = await collect(request, gen)
    message, has_calls = plan.message(text)
    result = _result(gen, final, "chat.completion", {"message": message, "logprobs": None})
    if has_calls and final.finish_reason == "stop":
        result["choices"][0]["finish_reason"] = "tool_calls"
    return JSONResponse(result)


# ----- text completions --------------------------------------------------------------------


@router.post("/completions", openapi_extra=json_body(CompletionRequest))
async def completions(request: Request, body: CompletionBody) -> Response:
    name = model_name(request, body.model)
    if preload_only(request):
        return await _preload(request, name)

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        if isinstance(body.prompt, str):
            return await tokenize(engine, body.prompt), ()
        return list(body.prompt), ()

    gen = await start(request, name, prompt_of, body, "cmpl-")
    if body.stream:
        return completion_stream(gen, body.include_usage, settings_of(request).shutdown_grace)
    text, final = await collect(request, gen)
    choice = {"text": text, "logprobs": None}
    return JSONResponse(_result(gen, final, "text_completion", choice))


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
        result = await engine.embed(inputs)
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
async def get_model(name: str, request: Request) -> dict[str, Any]:
    store = store_of(request)
    entry = await asyncio.to_thread(store.get, name)
    tag = await asyncio.to_thread(store.resolve, name)
    return model_item(tag, entry)
