"""`create_app`: the FastAPI application, its middleware, routers and lifespan.

All state lives on `app.state` (settings, store, loader, metrics registry): no globals, so
tests can run several apps in one process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from runner import __version__
from runner.api.anthropic import routes as anthropic_routes
from runner.api.core.dialect_common import OPENAI_PREFIXES, RERANK_PREFIXES
from runner.api.core.model_pull import PullPool
from runner.api.dmr import cache as dmr_cache
from runner.api.dmr import routes as dmr_routes
from runner.api.errors.renderers import RENDERERS
from runner.api.errors.table import install_error_handlers
from runner.api.http.access import (
    LOCALHOST_ORIGINS,
    ApiKeyMiddleware,
    HostMiddleware,
    OriginMiddleware,
    is_loopback,
    normalize_origin,
    warn_if_exposed,
)
from runner.api.http.json_guard import JsonGuardMiddleware
from runner.api.http.middleware import BodyLimitMiddleware, FormAsJsonMiddleware
from runner.api.http.openapi import true_openapi
from runner.api.llama_server import infill as llama_server_infill
from runner.api.llama_server import rerank as llama_server_rerank
from runner.api.llama_server import routes as llama_server_routes
from runner.api.llama_server.metrics import make_registry
from runner.api.ollama import models as ollama_models
from runner.api.ollama import routes as ollama_routes
from runner.api.openai import routes as openai_routes
from runner.api.responses import routes as responses_routes
from runner.api.responses.store import ResponseStore
from runner.api.ui.page import install_ui
from runner.config import Settings
from runner.loader import Loader
from runner.store import ModelStore

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    store: ModelStore | None = None,
    loader: Loader | None = None,
) -> FastAPI:
    """The server app. Missing `store`/`loader` are created from `settings`; the lifespan
    preloads `settings.model` and, on shutdown, lets requests drain for
    `settings.shutdown_grace` seconds before freeing the models."""
    store = store or ModelStore(settings.models_dir)
    loader = loader or Loader(settings, store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for name in settings.model:
            # A model the user asked for by name must exist: failing here makes uvicorn
            # exit non-zero instead of serving without it.
            try:
                model = await loader.preload(name)
            except Exception as exc:
                log.error("cannot preload %s: %s", name, exc)
                raise
            log.info("preloaded %s", model.name)
        try:
            yield
        finally:
            await loader.shutdown(settings.shutdown_grace)

    app = FastAPI(
        title="runner",
        version=__version__,
        description="Local LLM inference server (OpenAI-compatible, llama.cpp in-process)",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.loader = loader
    app.state.metrics_registry = make_registry(loader)
    app.state.pulls = PullPool()
    app.state.responses = ResponseStore(
        settings.resolved_responses_dir if settings.persist else None,
        max_bytes=settings.responses_disk,
        max_age=settings.responses_ttl,
    )

    install_error_handlers(app, renderers=RENDERERS)
    true_openapi(app)
    app.include_router(llama_server_routes.router)
    app.include_router(llama_server_infill.router)
    for prefix in RERANK_PREFIXES:  # described once, at the root (the same handler)
        app.include_router(llama_server_rerank.router, prefix=prefix, include_in_schema=not prefix)
    for prefix in OPENAI_PREFIXES:
        app.include_router(openai_routes.router, prefix=prefix)
    app.include_router(dmr_routes.router)
    app.include_router(dmr_cache.router)
    app.include_router(ollama_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(ollama_models.router)
    if settings.ui:
        install_ui(app, api_key_required=bool(settings.api_key))

    # Added last = outermost. Request path: body cap -> Host -> Origin -> CORS -> API key ->
    # JSON guard -> form-as-JSON -> routes (see http/access.py and http/json_guard.py).
    app.add_middleware(FormAsJsonMiddleware)
    app.add_middleware(JsonGuardMiddleware)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    origins = [normalize_origin(o) for o in settings.cors_origins]
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=None if "*" in origins else LOCALHOST_ORIGINS,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.add_middleware(OriginMiddleware, origins=origins)
    # Without a key, the Host check is what stops a DNS-rebinding page, on any address.
    if "*" not in origins and (is_loopback(settings.host) or not settings.api_key):
        app.add_middleware(
            HostMiddleware, origins=origins, any_address=not is_loopback(settings.host)
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    warn_if_exposed(settings)
    return app
