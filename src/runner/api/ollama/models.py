"""Ollama's model routes at the server root: `GET /api/version`, `/api/tags`, `/api/ps`;
`POST /api/show`, `/api/copy`, `/api/pull`; `DELETE /api/delete`.

Names are runner's store names (`ai/gemma3:270m`); what Ollama clients send (`gemma3`,
`gemma3:latest`) resolves as DMR names do. Everything goes through the same store and
loader as the DMR management routes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from runner import __version__
from runner.api.core.dialect_common import read_json, rfc3339, thinks
from runner.api.core.import_policy import allowed_import_dirs, import_source, not_a_model
from runner.api.core.model_pull import pull_response
from runner.api.core.model_store import import_lines, name_from_file, remove_model
from runner.api.core.schemas import json_body
from runner.api.errors.table import APIError
from runner.api.ollama.schemas import (
    OllamaCopyRequest,
    OllamaModelRequest,
    OllamaPullRequest,
    requested_model,
)
from runner.api.state import loader_of, settings_of, store_of
from runner.chat import ChatTemplateError, template_for
from runner.loader import ResidentModel
from runner.store import InvalidModelFile, ModelEntry, format_params, normalize, read_metadata

router = APIRouter(prefix="/api")

# `expires_at` of a model kept loaded forever (Ollama reports a far-future date too).
_FOREVER = 253402300799.0  # 9999-12-31T23:59:59Z


def details(entry: ModelEntry) -> dict[str, Any]:
    meta = entry.metadata
    return {
        "parent_model": "",
        "format": "gguf",
        "family": meta.architecture,
        "families": [meta.architecture],
        "parameter_size": format_params(meta.parameter_count),
        "quantization_level": meta.quantization,
    }


def _tag_row(tag: str, entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": tag,
        "model": tag,
        "modified_at": rfc3339(entry.created),
        "size": entry.size,
        "digest": entry.id,
        "details": details(entry),
    }


async def _entry(request: Request, name: str) -> ModelEntry:
    return await asyncio.to_thread(store_of(request).get, name)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/tags")
async def tags(request: Request) -> dict[str, Any]:
    entries = await asyncio.to_thread(store_of(request).list)
    return {"models": [_tag_row(tag, e) for e in entries for tag in (e.tags or [e.name])]}


def _ps_row(model: ResidentModel) -> dict[str, Any]:
    if model.keep_alive < 0:
        expires = _FOREVER
    else:  # a model in use expires keep_alive after its last holder lets go
        expires = (time.time() if model.busy else model.last_used) + model.keep_alive
    on_gpu = model.engine is not None and model.engine.info.gpu_layers > 0
    return {
        **_tag_row(model.name, model.entry),
        "size": model.estimate.total,
        "size_vram": model.estimate.total if on_gpu else 0,
        "expires_at": rfc3339(expires),
        "context_length": model.config.ctx_per_slot,
    }


@router.get("/ps")
async def ps(request: Request) -> dict[str, Any]:
    return {"models": [_ps_row(m) for m in loader_of(request).resident() if not m.loading]}


@router.post("/show", openapi_extra=json_body(OllamaModelRequest))
async def show(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    name = requested_model(body)
    entry = await _entry(request, name)
    meta = entry.metadata
    arch = meta.architecture
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.parameter_count": meta.parameter_count,
        "general.file_type": meta.file_type,
    }
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length"):
        if getattr(meta, key) is not None:
            info[f"{arch}.{key}"] = getattr(meta, key)
    if meta.head_count is not None:
        info[f"{arch}.attention.head_count"] = meta.head_count
    if meta.head_count_kv is not None:
        info[f"{arch}.attention.head_count_kv"] = meta.head_count_kv
    config = await asyncio.to_thread(store_of(request).get_config, name)  # this name's
    parameters = "\n".join(f"{k} {v}" for k, v in sorted(config.items()))
    template = _template_source(entry, config)
    # Every chat template gets tool calls (runner's per-family formats, generic otherwise);
    # a template that writes <think> makes a model that reasons.
    capabilities = ["completion", "embedding", "tools"]
    if thinks(template):
        capabilities.append("thinking")
    return {
        "license": "",
        "modelfile": f"# runner model {entry.name}\nFROM {entry.path}\n",
        "parameters": parameters,
        "template": template,
        "details": details(entry),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": rfc3339(entry.created),
    }


def _template_source(entry: ModelEntry, config: dict[str, Any]) -> str:
    """The chat template the model runs with: configured, from the GGUF, else built in."""
    meta = entry.metadata
    try:
        return template_for(
            meta.architecture, meta.chat_template, config.get("chat-template")
        ).source
    except ChatTemplateError:
        return meta.chat_template or ""


@router.delete("/delete", openapi_extra=json_body(OllamaModelRequest))
async def delete(request: Request) -> Response:
    body = await read_json(request)
    await remove_model(request, requested_model(body))
    return Response(status_code=200)


@router.post("/copy", openapi_extra=json_body(OllamaCopyRequest))
async def copy(request: Request) -> Response:
    body = await read_json(request)
    source, destination = body.get("source"), body.get("destination")
    if not isinstance(source, str) or not isinstance(destination, str) or not destination:
        raise APIError(400, "source and destination are required")
    await _entry(request, source)  # 404 before anything changes; materializes the bundle
    # One blob, another name for it, with the source name's config (its chat template).
    await asyncio.to_thread(store_of(request).copy, source, normalize(destination))
    return Response(status_code=200)


# ----- pull --------------------------------------------------------------------------------


def _progress(line: bytes) -> bytes:
    """A DMR progress line (`{"type", "message", "status"?, ...}`) as Ollama's
    `{"status", "digest", "total", "completed"}` (runner's pull uses Ollama's statuses)."""
    data = json.loads(line)
    if data.get("type") == "error":
        return _ndjson({"error": data.get("message", "pull failed")})
    if data.get("type") == "success":
        return _ndjson({"status": "success"})
    status: dict[str, Any] = {"status": data.get("status") or data.get("message", "")}
    if data.get("digest"):
        status["digest"] = data["digest"]
    if data.get("total"):
        status.update(total=data["total"], completed=data.get("pulled", 0))
    return _ndjson(status)


def _ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()


async def _ollama_lines(lines: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield _progress(line if isinstance(line, bytes) else str(line).encode())


@router.post("/pull", openapi_extra=json_body(OllamaPullRequest))
async def pull(request: Request) -> Response:
    """Pull `model` into the store with runner's pull (OCI registries as DMR names them,
    `hf.co/...`, URLs; see `store/pull.py`), streaming Ollama's progress objects. An
    absolute path to a local GGUF is imported instead (named after the file), under the
    same rules as `/models/create`: only from `--allow-import` directories, and one error
    that quotes nothing for any file that is not a readable GGUF."""
    body = await read_json(request)
    name = requested_model(body)
    if "\x00" in name:  # no file or registry name holds one; the OS would refuse it later
        raise APIError(400, "model must not contain NUL characters")
    store = store_of(request)
    if Path(name).is_absolute():
        source = import_source(name, allowed_import_dirs(settings_of(request)))
        try:
            await asyncio.to_thread(read_metadata, source)
        except InvalidModelFile as exc:
            raise not_a_model(name, exc) from exc
        tag = normalize(name_from_file(Path(name)))
        lines: AsyncIterator[Any] = import_lines(store, tag, source, as_json=True)
    else:
        # Errors before the download starts (unknown name, unreachable registry) are raised
        # here, as HTTP errors in Ollama's shape.
        started = await pull_response(request, name, None, None, as_json=True)
        lines = started.body_iterator
    if body.get("stream", True) is not False:
        return StreamingResponse(_ollama_lines(lines), media_type="application/x-ndjson")
    last: dict[str, Any] = {}
    async for line in lines:  # DMR's lines: an error one carries its status and code
        last = json.loads(line)
    if last.get("type") == "error":
        status = last.get("status")
        status = status if isinstance(status, int) and 400 <= status < 600 else 502
        raise APIError(status, last.get("message", "pull failed"), last.get("code"))
    return JSONResponse(json.loads(_progress(json.dumps(last).encode())))
