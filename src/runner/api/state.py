"""Typed access to what `create_app` puts on `app.state`, for route handlers and middleware.

All server state lives there (no globals), so several apps can run in one process.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from prometheus_client import CollectorRegistry

from runner.config import Settings
from runner.loader import Loader
from runner.store import ModelStore


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def store_of(request: Request) -> ModelStore:
    return request.app.state.store


def loader_of(request: Request) -> Loader:
    return request.app.state.loader


def metrics_registry_of(request: Request) -> CollectorRegistry:
    return request.app.state.metrics_registry


async def available_models(store: ModelStore) -> list[str]:
    """Every tag in the store (for "not found; available models: ..." messages)."""
    entries = await asyncio.to_thread(store.list)
    return [tag for entry in entries for tag in entry.tags]
