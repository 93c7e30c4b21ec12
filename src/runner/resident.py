"""A model the loader holds in memory, and the loader's errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .chat import ChatTemplate
from .engine import Engine, EngineConfig
from .memory import MemoryEstimate
from .store import ModelEntry

# What makes two loads the same: the file (sha256), how it is loaded, and how its chat is
# rendered (names of one file with different templates never share an engine).
ResidentKey = tuple[str, EngineConfig, str]

# The per-name config keys that change how a chat is rendered.
TEMPLATE_KEYS = ("chat-template", "tool-format", "reasoning-format")


def template_key(config: dict[str, Any]) -> str:
    """A fingerprint of a name's rendering settings ("" when it has none of its own)."""
    chosen = {k: config[k] for k in TEMPLATE_KEYS if config.get(k) is not None}
    if not chosen:
        return ""
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


class LoaderError(Exception):
    """Base of the loader's errors (the API maps each to HTTP)."""


class InsufficientMemory(LoaderError):
    """The model cannot fit in the memory budget even with every other model unloaded."""


class ModelBusy(LoaderError):
    """The operation needs the model idle, and it is serving requests."""


class LoadFailed(LoaderError):
    """llama.cpp could not load the model file (or the server is shutting down)."""


@dataclass(eq=False)
class ResidentModel:
    """A model in memory (or on its way there).

    Residents are keyed by the file's sha256, the load settings and the rendering settings
    (`key`): the tags of one file that agree on them share one engine (one copy of the
    weights, one prompt cache). Per-model settings belong to each name, so a template one
    name brought never renders another's chats. `name` is the tag it was first loaded under;
    `aliases` are the other tags it has served since.
    """

    name: str
    entry: ModelEntry
    config: EngineConfig
    keep_alive: float
    estimate: MemoryEstimate
    template: ChatTemplate | None = None
    engine: Engine | None = None
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    in_use: int = 0
    last_used: float = field(default_factory=time.time)
    loaded_at: float = 0.0
    load_seconds: float = 0.0
    idle_timer: asyncio.TimerHandle | None = None
    # Granted its share of the memory budget / model count (counts against it from then on).
    admitted: bool = False
    # Replaced in the name table (its tag now names another file): unload once idle.
    retired: bool = False
    aliases: list[str] = field(default_factory=list)
    template_key: str = ""

    @property
    def key(self) -> ResidentKey:
        return (self.entry.id, self.config, self.template_key)

    def drop_name(self, tag: str, remaining: list[str]) -> None:
        """Tag `tag` is being removed from the store; the file keeps `remaining` tags."""
        if tag in self.aliases:
            self.aliases.remove(tag)
        if self.name == tag and remaining:
            self.name = self.aliases.pop(0) if self.aliases else remaining[0]

    retire_reason: str = "its name now refers to another file"

    @property
    def loading(self) -> bool:
        return not self.ready.done()

    @property
    def busy(self) -> bool:
        return self.in_use > 0 or (self.engine is not None and self.engine.busy)

    def describe(self) -> dict[str, Any]:
        """DMR's `/engines/ps` row (plus runner's own fields)."""
        gpu_layers = self.engine.info.gpu_layers if self.engine is not None else None
        return {
            "backend_name": "llama.cpp",
            "model_name": self.name,
            "model_id": self.entry.id,
            "aliases": list(self.aliases),
            "mode": "completion",
            "last_used": _rfc3339(self.last_used),
            "in_use": self.busy,
            "loading": self.loading,
            "keep_alive": format_keep_alive(self.keep_alive),
            "slots": self.config.slots,
            "context_size": self.config.ctx_per_slot,
            "cache_type_k": self.config.cache_type_k,
            "cache_type_v": self.config.cache_type_v,
            "n_gpu_layers": gpu_layers,
            "draft_model": Path(self.config.draft_model).name if self.config.draft_model else None,
            "memory_estimate": self.estimate.total,
            "loaded_at": _rfc3339(self.loaded_at) if self.loaded_at else None,
            "load_seconds": round(self.load_seconds, 3),
            "error": self.engine.dead if self.engine is not None else None,
        }


def _rfc3339(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def format_keep_alive(seconds: float) -> str:
    if seconds < 0:
        return "-1"
    return f"{seconds:g}s"
