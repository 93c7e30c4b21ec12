"""llama-server's extra routes: /health, /slots, /tokenize, /detokenize, /lora-adapters,
/metrics."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runner.api.core.inference import engine_of, hold_model, model_name, tokenize
from runner.api.core.schemas import INT32_MAX, LoraScale, ModelQuery, json_body
from runner.api.errors.table import APIError
from runner.api.http.bodies import parsed
from runner.api.llama_server import slot_budget
from runner.api.llama_server.schemas import (
    MAX_SLOT_FILE_LENGTH,
    SLOT_FILE_PATTERN,
    DetokenizeRequest,
    SlotFileRequest,
    TokenizeRequest,
)
from runner.api.state import loader_of, metrics_registry_of, settings_of

router = APIRouter()
# Bodies parsed (and validated) off the event loop when large; see http/bodies.py.
TokenizeBody = Annotated[TokenizeRequest, Depends(parsed(TokenizeRequest))]
DetokenizeBody = Annotated[DetokenizeRequest, Depends(parsed(DetokenizeRequest))]


@router.get("/health")
async def health() -> dict[str, str]:
    # Liveness of the server: models load on demand, so none needs to be resident.
    return {"status": "ok"}


@router.get("/slots")
async def slots(request: Request, model: ModelQuery = None, fail_on_no_slot: bool = False) -> Any:
    """Slots of `?model=` (must be resident), else of the first resident model; [] if none."""
    loader = loader_of(request)
    if model:
        resident = loader.get_resident(model)
        if resident is None or resident.engine is None:
            raise APIError(404, f"model {model!r} is not loaded", "model_not_loaded", param="model")
    else:
        resident = next((m for m in loader.resident() if m.engine is not None), None)
        if resident is None:
            return []
    engine = resident.engine
    assert engine is not None
    described = engine.slots()
    if fail_on_no_slot and all(s.get("is_processing") for s in described):
        raise APIError(503, "no slot available", "no_slot_available")
    return [{**s, "model": resident.name} for s in described]


_SLOT_FILE = re.compile(SLOT_FILE_PATTERN)


@router.post("/slots/{slot_id}")
async def slot_action(
    slot_id: Annotated[int, Path(ge=0, le=INT32_MAX)],
    request: Request,
    action: Literal["save", "restore", "erase"],
    model: ModelQuery = None,
    body: SlotFileRequest | None = None,
) -> dict[str, Any]:
    """llama-server's slot files: `?action=save|restore` with `{"filename": ...}`, or erase.

    Files live in `<cache dir>/slots/<model id>/`; a filename is a plain name, never a path.
    All together they are bounded by `--slot-files-disk` (`slot_budget.py`).
    """
    filename = body.filename if body else None
    path = None
    async with hold_model(request, model_name(request, model)) as resident:
        if action != "erase":
            if (
                not filename
                or not _SLOT_FILE.match(filename)
                or len(filename) > MAX_SLOT_FILE_LENGTH
            ):
                raise APIError(400, "filename must be a plain file name", param="filename")
            folder = settings_of(request).resolved_cache_dir / "slots" / resident.entry.id
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder / filename)
            if action == "restore" and not os.path.isfile(path):
                raise APIError(404, f"no slot file named {filename!r}", "slot_file_not_found")
        engine = engine_of(resident)
        result = await engine.slot_action(slot_id, action, path, resident.entry.id)
    if action == "save" and path is not None:
        settings = settings_of(request)
        root, limit = settings.resolved_cache_dir / "slots", settings.slot_files_disk
        await asyncio.to_thread(slot_budget.enforce, root, root / resident.entry.id / filename, limit)  # fmt: skip
    return {**result, "model": resident.name}


@router.post("/tokenize", openapi_extra=json_body(TokenizeRequest))
async def tokenize_route(request: Request, body: TokenizeBody) -> dict[str, Any]:
    async with hold_model(request, model_name(request, body.model)) as model:
        engine = engine_of(model)
        tokens = await tokenize(engine, body.content, body.add_special, body.parse_special)
        if not body.with_pieces:
            return {"tokens": tokens}
        # Vocabulary reads are safe from any thread (`LlamaModel`): build the pieces on a
        # worker thread, leaving the engine thread to generation.
        pieces = await asyncio.to_thread(lambda: [engine.token_piece(t, True) for t in tokens])
    return {"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces, strict=True)]}


@router.post("/detokenize", openapi_extra=json_body(DetokenizeRequest))
async def detokenize_route(request: Request, body: DetokenizeBody) -> dict[str, Any]:
    async with hold_model(request, model_name(request, body.model)) as model:
        engine = engine_of(model)
        n_vocab = engine.info.n_vocab
        bad = next((t for t in body.tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise APIError(
                400, f"token {bad} is outside the vocabulary [0, {n_vocab})", param="tokens"
            )
        return {"content": engine.detokenize(body.tokens)}


@router.get("/lora-adapters")
async def lora_adapters(request: Request, model: ModelQuery = None) -> list[dict[str, Any]]:
    """The model's LoRA adapters (`--lora`, `_configure`), with the scales that requests
    naming no `lora` run with: `[{id, path, scale}]` as llama-server."""
    async with hold_model(request, model_name(request, model)) as resident:
        return engine_of(resident).lora_adapters()


@router.post("/lora-adapters")
async def set_lora_adapters(
    request: Request, body: list[LoraScale], model: ModelQuery = None
) -> dict[str, Any]:
    """New scales for requests that name no `lora` (adapters not listed get 0), as
    llama-server; the model's KV computed with other scales is never reused for them."""
    async with hold_model(request, model_name(request, model)) as resident:
        engine_of(resident).set_lora_scales([(a.id, a.scale) for a in body])
    return {"success": True}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    data = generate_latest(metrics_registry_of(request))
    return Response(data, media_type=CONTENT_TYPE_LATEST)
