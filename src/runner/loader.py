"""The one owner of model lifetimes: which models are resident, loading on first use,
unloading after idle time, and evicting to stay inside the memory budget.

Callers hold a model through `Loader.use(name)` for as long as a request runs; a model with
any holder is never unloaded. The idle timer starts when the last holder lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat import ChatTemplate, template_for
from .config import Settings, parse_duration
from .engine import Engine, EngineConfig, ModelLoadError
from .memory import MemoryEstimate, default_budget, estimate
from .store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

# Keys accepted by `_configure` (DMR spelling) and persisted per model.
CONFIG_KEYS = {
    "context-size": int,
    "slots": int,
    "similarity": float,
    "keep_alive": str,
    "gpu-layers": int,
    "chat-template": str,
}


class InsufficientMemory(Exception):
    """The model cannot fit in the memory budget even with every other model unloaded."""


class ModelBusy(Exception):
    """The operation needs the model idle, and it is serving requests."""


class LoadFailed(Exception):
    """llama.cpp could not load the model file."""


@dataclass(eq=False)
class ResidentModel:
    """A model in memory (or on its way there)."""

    name: str
    entry: ModelEntry
    config: EngineConfig
    keep_alive: float
    estimate: MemoryEstimate
    template: ChatTemplate | None = None
    engine: Engine | None = None
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    in_use: int = 0
    last_used: float = field(default_factory=time.time)
    loaded_at: float = 0.0
    idle_timer: asyncio.TimerHandle | None = None

    @property
    def loading(self) -> bool:
        return not self.ready.done()

    @property
    def busy(self) -> bool:
        return self.in_use > 0 or (self.engine is not None and self.engine.busy)

    def describe(self) -> dict[str, Any]:
        """DMR's `/engines/ps` row."""
        return {
            "backend_name": "llama.cpp",
            "model_name": self.name,
            "model_id": self.entry.id,
            "mode": "completion",
            "last_used": self.last_used,
            "in_use": self.busy,
            "loading": self.loading,
            "keep_alive": _format_keep_alive(self.keep_alive),
            "slots": self.config.slots,
            "context_size": self.config.ctx_per_slot,
            "memory_estimate": self.estimate.total,
        }


def _format_keep_alive(seconds: float) -> str:
    if seconds < 0:
        return "-1"
    return f"{seconds:g}s"


class Loader:
    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        engine_factory: Callable[[Path, EngineConfig, str], Engine] = Engine,
    ) -> None:
        self.settings = settings
        self.store = store
        self.budget = settings.memory_budget or default_budget()
        self._engine_factory = engine_factory
        self._models: dict[str, ResidentModel] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition(self._lock)
        self._closing = False
        self.on_unload: list[Callable[[ResidentModel, str], None]] = []

    # -- the way in ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[ResidentModel]:
        """Hold model `name` (loading it if needed) for the duration of the block."""
        model = await self._acquire(name)
        try:
            yield model
        finally:
            await self._release(model)

    async def preload(self, name: str) -> ResidentModel:
        async with self.use(name) as model:
            return model

    async def _acquire(self, name: str) -> ResidentModel:
        entry = await asyncio.to_thread(self.store.get, name)  # may materialize the bundle
        tag = name if name in entry.tags else self._canonical(name, entry)
        async with self._lock:
            if self._closing:
                raise LoadFailed("the server is shutting down")
            model = self._models.get(tag)
            if model is None or model.entry.id != entry.id:
                model = self._new_resident(tag, entry)
                self._models[tag] = model
                asyncio.get_running_loop().create_task(self._load(model))
            model.in_use += 1
            if model.idle_timer is not None:
                model.idle_timer.cancel()
                model.idle_timer = None
        try:
            await asyncio.shield(model.ready)
        except BaseException:
            async with self._lock:
                model.in_use -= 1
            raise
        return model

    async def _release(self, model: ResidentModel) -> None:
        async with self._lock:
            model.in_use -= 1
            model.last_used = time.time()
            if model.in_use == 0:
                self._arm_idle_timer(model)
                self._changed.notify_all()

    def _canonical(self, name: str, entry: ModelEntry) -> str:
        try:
            return self.store.resolve(name)
        except Exception:
            return entry.name

    # -- loading -------------------------------------------------------------------------

    def _new_resident(self, tag: str, entry: ModelEntry) -> ResidentModel:
        cfg = self.model_config(entry)
        ctx = cfg.get("context-size") or self.settings.ctx_size
        if entry.metadata.context_length:
            ctx = min(ctx, entry.metadata.context_length)
        config = EngineConfig(
            slots=cfg.get("slots") or self.settings.slots,
            ctx_per_slot=ctx,
            n_batch=self.settings.batch_size,
            n_ubatch=self.settings.ubatch_size,
            threads=self.settings.threads,
            gpu_layers=cfg.get("gpu-layers", self.settings.gpu_layers),
            similarity=cfg.get("similarity", self.settings.similarity),
            queue_size=self.settings.queue_size,
        )
        keep_alive = self.settings.idle_timeout
        if cfg.get("keep_alive") is not None:
            keep_alive = parse_duration(cfg["keep_alive"])
        return ResidentModel(
            name=tag,
            entry=entry,
            config=config,
            keep_alive=keep_alive,
            estimate=estimate(entry.metadata, entry.size, config),
        )

    async def _load(self, model: ResidentModel) -> None:
        try:
            await self._make_room(model)
            model.template = self._template(model)
            started = time.perf_counter()
            model.engine = await asyncio.to_thread(
                self._engine_factory, model.entry.path, model.config, model.name
            )
            model.loaded_at = time.time()
            log.info(
                "loaded %s in %.2fs (slots=%d, ctx/slot=%d, gpu layers=%d, est. %.0f MiB)",
                model.name,
                time.perf_counter() - started,
                model.config.slots,
                model.config.ctx_per_slot,
                model.engine.model.gpu_layers,
                model.estimate.total / (1 << 20),
            )
            model.ready.set_result(None)
        except BaseException as exc:
            async with self._lock:
                if self._models.get(model.name) is model:
                    del self._models[model.name]
                self._changed.notify_all()
            if isinstance(exc, ModelLoadError):
                exc = LoadFailed(str(exc))
            log.error("could not load %s: %s", model.name, exc)
            model.ready.set_exception(exc)
            model.ready.exception()  # mark retrieved: waiters re-raise it themselves

    def _template(self, model: ResidentModel) -> ChatTemplate:
        meta = model.entry.metadata
        override = self.model_config(model.entry).get("chat-template")
        if override is None and self.settings.chat_template_file is not None:
            override = Path(self.settings.chat_template_file).read_text(encoding="utf-8")
        return template_for(meta.architecture, meta.chat_template, override)

    async def _make_room(self, model: ResidentModel) -> None:
        """Evict least recently used idle models until `model` fits; wait for busy ones."""
        need = model.estimate.total
        if need > self.budget:
            raise InsufficientMemory(
                f"{model.name} needs about {need / (1 << 20):.0f} MiB (weights, KV cache for "
                f"{model.config.slots} slots x {model.config.ctx_per_slot} tokens, buffers) but "
                f"the memory budget is {self.budget / (1 << 20):.0f} MiB; lower context-size "
                "or slots, or raise --memory-budget"
            )
        async with self._lock:
            while True:
                others = [m for m in self._models.values() if m is not model]
                used = sum(m.estimate.total for m in others)
                count_ok = self.settings.max_models is None or len(others) < self.settings.max_models
                if count_ok and used + need <= self.budget:
                    return
                idle = [m for m in others if not m.loading and not m.busy]
                if idle:
                    victim = min(idle, key=lambda m: m.last_used)
                    await self._unload_locked(victim, "evicted to make room for " + model.name)
                    continue
                await self._changed.wait()

    # -- unloading -----------------------------------------------------------------------

    def _arm_idle_timer(self, model: ResidentModel) -> None:
        if model.keep_alive < 0 or self._closing:
            return
        loop = asyncio.get_running_loop()
        model.idle_timer = loop.call_later(
            model.keep_alive, lambda: loop.create_task(self._idle_expired(model))
        )

    async def _idle_expired(self, model: ResidentModel) -> None:
        async with self._lock:
            if self._models.get(model.name) is model and model.in_use == 0 and not model.busy:
                await self._unload_locked(model, f"idle for {model.keep_alive:g}s")

    async def _unload_locked(self, model: ResidentModel, reason: str) -> None:
        if self._models.get(model.name) is model:
            del self._models[model.name]
        if model.idle_timer is not None:
            model.idle_timer.cancel()
        engine, model.engine = model.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close, True, 30.0)
        for hook in self.on_unload:
            hook(model, reason)
        log.info("unloaded %s (%s)", model.name, reason)
        self._changed.notify_all()

    async def unload(self, names: list[str] | None = None, everything: bool = False) -> list[str]:
        """Unload idle models (all, or those named); busy ones are left alone."""
        done: list[str] = []
        async with self._lock:
            targets = list(self._models.values()) if everything else []
            for name in names or []:
                targets += [m for m in self._models.values() if self._matches(m, name)]
            for model in targets:
                if model.busy or model.loading or model.name in done:
                    continue
                await self._unload_locked(model, "unload requested")
                done.append(model.name)
        return done

    def _matches(self, model: ResidentModel, name: str) -> bool:
        if name in (model.name, model.entry.id):
            return True
        try:
            return self.store.resolve(name) == model.name
        except Exception:
            return False

    async def shutdown(self, grace: float = 30.0) -> None:
        """Let running requests finish (up to `grace` seconds), then free everything."""
        async with self._lock:
            self._closing = True
            models = list(self._models.values())
            self._models.clear()
        for model in models:
            if model.idle_timer is not None:
                model.idle_timer.cancel()
            if model.engine is not None:
                await asyncio.to_thread(model.engine.close, True, grace)
                for hook in self.on_unload:
                    hook(model, "shutdown")

    # -- queries and configuration -------------------------------------------------------

    def resident(self) -> list[ResidentModel]:
        return list(self._models.values())

    def get_resident(self, name: str) -> ResidentModel | None:
        return next((m for m in self._models.values() if self._matches(m, name)), None)

    def model_config(self, entry: ModelEntry) -> dict[str, Any]:
        return self.store.get_config(entry.id)

    async def configure(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Persist per-model settings (applied at the next load). Raises ModelBusy while
        the model serves requests; an idle resident copy is unloaded so the next request
        loads it with the new settings."""
        entry = await asyncio.to_thread(self.store.get, name)
        clean = validate_config(changes)
        async with self._lock:
            holders = [m for m in self._models.values() if m.entry.id == entry.id]
            if any(m.busy or m.loading for m in holders):
                raise ModelBusy(f"{entry.name} is serving requests; try again when it is idle")
            merged = {**self.store.get_config(entry.id), **clean}
            merged = {k: v for k, v in merged.items() if v is not None}
            await asyncio.to_thread(self.store.set_config, entry.id, merged)
            for model in holders:
                await self._unload_locked(model, "reconfigured")
        return merged


def validate_config(changes: dict[str, Any]) -> dict[str, Any]:
    """Check `_configure` values; raises ValueError naming the bad key."""
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in CONFIG_KEYS:
            continue
        if value is None:
            clean[key] = None
            continue
        kind = CONFIG_KEYS[key]
        try:
            if kind is int and (isinstance(value, bool) or int(value) != value):
                raise ValueError
            clean[key] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"'{key}' must be of type {kind.__name__}") from None
    if "context-size" in clean and clean["context-size"] is not None:
        if not 64 <= clean["context-size"] <= 1 << 20:
            raise ValueError("'context-size' must be between 64 and 1048576")
    if clean.get("slots") is not None and not 1 <= clean["slots"] <= 256:
        raise ValueError("'slots' must be between 1 and 256")
    if clean.get("similarity") is not None and not 0.0 <= clean["similarity"] <= 1.0:
        raise ValueError("'similarity' must be between 0 and 1")
    if clean.get("keep_alive") is not None:
        parse_duration(clean["keep_alive"])
    return clean
