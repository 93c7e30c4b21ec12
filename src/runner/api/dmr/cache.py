"""The prompt cache as an operator sees it: `GET /engines/cache` lists each model's cache
(its tiers' counters) and the prefixes clients pinned (cache breakpoints, 24h retention) with
their size, tier, TTL left and hits; `DELETE /engines/cache/pins/{pin_id}` drops one pin
(its entry stays, as an ordinary one that the LRU may evict).

A model's cache is listed from its first load since start on: caches outlive unloads, so the
pins of an unloaded model are listed too. Pins of a model not loaded since a restart are on
disk and come back when it loads.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from runner.api.errors.table import APIError
from runner.api.state import loader_of
from runner.cache import PromptCache

router = APIRouter()

PinId = Annotated[str, Path(pattern="^[0-9a-f]{16}$")]


def _describe(cache: PromptCache, names: dict[str, str]) -> dict[str, Any]:
    stats = cache.stats()
    model_id = cache.key.model_sha256
    return {
        "model": names.get(model_id, model_id[:12]),
        "model_id": model_id,
        "kv_layout": cache.key.kv_layout,
        "tiers": {"ram": stats["ram"], "disk": stats["disk"]},
        "pinned": stats["pins"],
        "pins": cache.pins(),
    }


@router.get("/engines/cache")
async def engines_cache(request: Request) -> dict[str, Any]:
    """Every model's prompt cache: tiers, and pins (id, tokens, tier, bytes, ttl, ttl_left,
    expires_at, hits)."""
    loader = loader_of(request)
    entries = await asyncio.to_thread(loader.store.list)
    names = {entry.id: entry.name for entry in entries}
    caches = loader.prompt_caches()
    # Each takes its cache's lock, which the engine thread also takes: not on the event loop.
    return {"models": await asyncio.to_thread(lambda: [_describe(c, names) for c in caches])}


@router.delete("/engines/cache/pins/{pin_id}")
async def drop_pin(request: Request, pin_id: PinId) -> dict[str, Any]:
    """Forget one pin (as listed by `GET /engines/cache`)."""
    for cache in loader_of(request).prompt_caches():
        if await asyncio.to_thread(cache.unpin, pin_id):
            return {"deleted": pin_id}
    raise APIError(404, f"no pin {pin_id}", "pin_not_found")
