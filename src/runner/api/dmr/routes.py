"""DMR's management routes: engine status, `ps`, unload, per-model configuration, and the
models API (list, inspect, import a local GGUF, delete).

Everything here goes through `app.state.loader` (which models are resident) and
`app.state.store` (which models exist); errors use the OpenAI shape from `errors/table.py`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from runner.api.core.dialect_common import read_json
from runner.api.core.import_policy import (
    allowed_import_dirs,
    check_draft_model,
    check_lora_adapters,
    import_source,
    not_a_model,
)
from runner.api.core.model_store import import_lines, name_from_file, remove_model
from runner.api.core.schemas import ModelPath, ModelQuery, json_body
from runner.api.dmr.schemas import ConfigureRequest, CreateModelRequest, UnloadRequest
from runner.api.errors.table import APIError
from runner.api.state import loader_of, settings_of, store_of
from runner.config import format_size
from runner.loader import validate_config
from runner.store import (
    InvalidModelFile,
    ModelEntry,
    format_params,
    normalize,
    read_metadata,
)

log = logging.getLogger(__name__)

router = APIRouter()

BACKEND = "llama.cpp"


# ----- helpers -----------------------------------------------------------------------------


async def _entry(request: Request, name: str) -> ModelEntry:
    return await asyncio.to_thread(store_of(request).get, name)


def _check_backend(backend: str | None) -> None:
    if backend not in (None, "", BACKEND):
        raise APIError(404, f"unknown backend {backend!r}; this server runs {BACKEND}", "not_found")


def model_json(entry: ModelEntry, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """DMR's model object: `id, tags, created, config{format, quantization, parameters,
    architecture, size, context_size}` (context_size: the configured one, else the model's)."""
    meta = entry.metadata
    context = (config or {}).get("context-size") or meta.context_length
    return {
        "id": f"sha256:{entry.id}",
        "tags": entry.tags,
        "created": entry.created,
        "config": {
            "format": "gguf",
            "quantization": meta.quantization,
            "parameters": format_params(meta.parameter_count),
            "architecture": meta.architecture,
            "size": format_size(entry.size),
            "context_size": context,
        },
    }


# ----- engines -----------------------------------------------------------------------------


def _llama_version() -> str:
    import llama_cpp

    try:
        core = llama_cpp.llama_version().decode("utf-8", "replace")
    except Exception:  # older bindings: no llama_version()
        core = "unknown"
    return f"llama-cpp-python {llama_cpp.__version__}, llama.cpp {core}"


@router.get("/engines/status")
@router.get("/engines/llama.cpp/status", include_in_schema=False)
async def engines_status(request: Request) -> JSONResponse:
    """Is the backend running, which llama.cpp, on which devices, with which models loaded."""
    from runner import memory, native
    from runner.engine import gpu_offload_supported, system_info

    loader = loader_of(request)
    devices = await asyncio.to_thread(memory.devices)
    models = [m.describe() for m in loader.resident()]
    version = _llama_version()
    settings = loader.settings
    return JSONResponse(
        {
            BACKEND: f"running {version}",
            "running": True,
            "backend": BACKEND,
            "version": version,
            "system_info": system_info(),
            "llama_build": native.describe(),
            "gpu_offload": gpu_offload_supported(),
            "devices": [d.to_dict() for d in devices],
            "memory_budget": loader.budget,
            "memory_used_estimate": sum(m["memory_estimate"] for m in models),
            "max_models": settings.max_models,
            "idle_timeout": settings.idle_timeout,
            "models": models,
            "engine_failures": loader.failures,
        }
    )


@router.get("/engines/ps")
@router.get("/engines/llama.cpp/ps", include_in_schema=False)
async def engines_ps(request: Request) -> list[dict[str, Any]]:
    """DMR's running-models table: one row per resident (or loading) model."""
    return [m.describe() for m in loader_of(request).resident()]


@router.post("/engines/unload", openapi_extra=json_body(UnloadRequest, required=False))
@router.post("/engines/llama.cpp/unload", include_in_schema=False)
async def engines_unload(request: Request) -> dict[str, Any]:
    """`{all, backend, models[]}`: unload idle models now. A model serving requests is left
    alone (reported in `busy`); it unloads on its idle timer as usual."""
    body = await read_json(request, allow_empty=True)
    _check_backend(body.get("backend"))
    everything = body.get("all", False)
    names = body.get("models")
    if not isinstance(everything, bool):
        raise APIError(400, "'all' must be a boolean", "invalid_request", param="all")
    if names is None:
        names = []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise APIError(400, "'models' must be a list of names", "invalid_request", param="models")
    loader = loader_of(request)
    for name in names:  # a name that is neither resident nor in the store is a typo: 404
        if loader.get_resident(name) is None:
            await _entry(request, name)
    unloaded = await loader.unload(names, everything=everything)
    busy = sorted(
        m.name
        for m in loader.resident()
        if (everything or any(loader.matches(m, n) for n in names)) and m.name not in unloaded
    )
    return {"unloaded_runners": len(unloaded), "unloaded": unloaded, "busy": busy}


@router.post("/engines/_configure", openapi_extra=json_body(ConfigureRequest))
@router.post("/engines/llama.cpp/_configure", openapi_extra=json_body(ConfigureRequest))
async def engines_configure(request: Request) -> JSONResponse:
    """`{model, context-size, keep_alive, slots, similarity, gpu-layers, chat-template,
    runtime-flags}`: persisted in the store (survives restarts), applied at the next load.
    202 on success; 409 while the model serves requests; 400 for bad values."""
    body = await read_json(request, allow_empty=True)
    name = body.get("model")
    if not isinstance(name, str) or not name.strip():
        raise APIError(400, "'model' is required", "invalid_request", param="model")
    loader = loader_of(request)
    entry = await _entry(request, name)
    try:
        clean = validate_config(body)  # 400 before anything else (busy or not)
        if clean.get("draft-model"):
            allowed = allowed_import_dirs(settings_of(request))
            draft = clean["draft-model"]
            await asyncio.to_thread(check_draft_model, draft, store_of(request), allowed)
        if clean.get("lora"):
            allowed = allowed_import_dirs(settings_of(request))
            lora = clean["lora"]
            await asyncio.to_thread(check_lora_adapters, lora, store_of(request), allowed)
        config = await loader.configure(name, body)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_config") from exc
    configured = await asyncio.to_thread(_configured_name, request, name, entry)
    return JSONResponse(
        {"model": configured, "id": f"sha256:{entry.id}", "config": config}, status_code=202
    )


def _configured_name(request: Request, name: str, entry: ModelEntry) -> str:
    """The name a config belongs to: the tag `name` resolves to (a full ID: the primary)."""
    resolved = store_of(request).resolve(name)
    return resolved if resolved in entry.tags else entry.name


@router.get("/engines/_configure")
@router.get("/engines/llama.cpp/_configure")
async def engines_configs(request: Request, model: ModelQuery = None) -> Any:
    """Every model name's persisted configuration, or `?model=NAME`'s alone (a config
    belongs to a name: other names of the same file have their own)."""
    store = store_of(request)
    if model:
        entry = await _entry(request, model)
        return {
            "model": await asyncio.to_thread(_configured_name, request, model, entry),
            "id": f"sha256:{entry.id}",
            "config": await asyncio.to_thread(store.get_config, model),
        }
    entries = await asyncio.to_thread(store.list)
    named = [(tag, e) for e in entries for tag in e.tags]
    configs = await asyncio.to_thread(lambda: [store.get_config(tag) for tag, _ in named])
    return [
        {"model": tag, "id": f"sha256:{e.id}", "config": config}
        for (tag, e), config in zip(named, configs, strict=True)
        if config
    ]


# ----- models ------------------------------------------------------------------------------


@router.get("/models")
async def models_list(request: Request) -> list[dict[str, Any]]:
    store = store_of(request)
    entries = await asyncio.to_thread(store.list)
    return [model_json(e, store.get_config(e.name)) for e in entries]


@router.post("/models/create", openapi_extra=json_body(CreateModelRequest))
async def models_create(request: Request) -> StreamingResponse:
    """`{"from": NAME | URL | "/path/to/local.gguf", "tag"?: NAME, "sha256"?: HEX}`: pull a
    model (registry name, `hf.co/...`, URL) or import a local GGUF into the store, streaming
    progress lines (JSON lines with `Accept: application/json`, else text), then a success
    or error line. Problems found before the transfer starts are plain HTTP errors."""
    body = await read_json(request, allow_empty=True)
    source = body.get("from")
    if not isinstance(source, str) or not source.strip():
        raise APIError(400, "'from' (a model name or a local .gguf path) is required", param="from")
    if _is_remote(source):
        return await _pull(request, body, source.strip())
    path = import_source(source, allowed_import_dirs(settings_of(request)))
    tag = body.get("tag") or body.get("name") or name_from_file(Path(source))
    if not isinstance(tag, str):
        raise APIError(400, "'tag' must be a string", "invalid_request", param="tag")
    try:
        tag = normalize(tag)
        await asyncio.to_thread(read_metadata, path)
    except InvalidModelFile as exc:
        raise not_a_model(source, exc) from exc
    as_json = "application/json" in request.headers.get("accept", "")
    media = "application/x-ndjson" if as_json else "text/plain; charset=utf-8"
    store = store_of(request)
    return StreamingResponse(import_lines(store, tag, path, as_json), media_type=media)


def _is_remote(source: str) -> bool:
    text = source.strip()
    if re.match(r"^https?://", text, re.IGNORECASE):
        return True
    return not text.startswith(("/", "~", ".")) and not text.lower().endswith(".gguf")


async def _pull(request: Request, body: dict[str, Any], source: str) -> StreamingResponse:
    from runner.api.core.model_pull import pull_response

    tag = body.get("tag") or body.get("name")
    sha256 = body.get("sha256")
    for key, value in (("tag", tag), ("sha256", sha256)):
        if value is not None and not isinstance(value, str):
            raise APIError(400, f"'{key}' must be a string", "invalid_request", param=key)
    as_json = "application/json" in request.headers.get("accept", "")
    return await pull_response(request, source, tag, sha256, as_json)


@router.get("/models/{name:path}")
async def models_get(request: Request, name: ModelPath) -> dict[str, Any]:
    """One model by name; partial names match (`gemma3` finds `ai/gemma3:latest`)."""
    entry = await _entry(request, name)
    return model_json(entry, await asyncio.to_thread(store_of(request).get_config, name))


@router.delete("/models/{name:path}")
async def models_delete(request: Request, name: ModelPath) -> dict[str, Any]:
    """Remove a model name (or every name of `sha256:ID`); the file goes with its last name.
    409 while the model is loaded and serving; an idle resident copy is unloaded first."""
    return await remove_model(request, name)
