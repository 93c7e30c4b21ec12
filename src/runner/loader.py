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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .cache import CacheKey, PromptCache
from .chat import ChatTemplate, template_for
from .config import Settings, parse_duration, parse_gpu_layers
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


class LoaderError(Exception):
    """Base of the loader's errors; `status` and `code` say how HTTP reports them."""

    status: int = 500
    code: str = "loader_error"


class InsufficientMemory(LoaderError):
    """The model cannot fit in the memory budget even with every other model unloaded."""

    status = 507
    code = "insufficient_memory"


class ModelBusy(LoaderError):
    """The operation needs the model idle, and it is serving requests."""

    status = 409
    code = "model_busy"


class LoadFailed(LoaderError):
    """llama.cpp could not load the model file (or the server is shutting down)."""

    status = 500
    code = "model_load_failed"


@dataclass(eq=False)
class ResidentModel:
    """A model in memory (or on its way there).

    Residents are keyed by canonical name (tag), so two tags of one file are two residents:
    that lets each carry its own settings and lets them be evicted independently.
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

    @property
    def loading(self) -> bool:
        return not self.ready.done()

    @property
    def busy(self) -> bool:
        return self.in_use > 0 or (self.engine is not None and self.engine.busy)

    def describe(self) -> dict[str, Any]:
        """DMR's `/engines/ps` row (plus runner's own fields)."""
        gpu_layers = self.engine.model.gpu_layers if self.engine is not None else None
        return {
            "backend_name": "llama.cpp",
            "model_name": self.name,
            "model_id": self.entry.id,
            "mode": "completion",
            "last_used": _rfc3339(self.last_used),
            "in_use": self.busy,
            "loading": self.loading,
            "keep_alive": _format_keep_alive(self.keep_alive),
            "slots": self.config.slots,
            "context_size": self.config.ctx_per_slot,
            "n_gpu_layers": gpu_layers,
            "memory_estimate": self.estimate.total,
            "loaded_at": _rfc3339(self.loaded_at) if self.loaded_at else None,
            "load_seconds": round(self.load_seconds, 3),
        }


def _rfc3339(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _format_keep_alive(seconds: float) -> str:
    if seconds < 0:
        return "-1"
    return f"{seconds:g}s"


class Loader:
    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        engine_factory: Callable[..., Engine] = Engine,
    ) -> None:
        self.settings = settings
        self.store = store
        self.budget = settings.memory_budget or default_budget()
        self._engine_factory = engine_factory
        self._models: dict[str, ResidentModel] = {}
        self._retired: set[ResidentModel] = set()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition(self._lock)
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()  # strong refs: the loop keeps weak ones
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
                if model is not None:  # the tag was moved to another file
                    await self._retire_locked(model)
                model = self._new_resident(tag, entry)
                self._models[tag] = model
                log.info("loading %s (%s)", tag, entry.short_id)
                self._spawn(self._load(model))
            model.in_use += 1
            self._cancel_timer(model)
        try:
            await asyncio.shield(model.ready)
        except BaseException:
            async with self._lock:
                model.in_use -= 1
                self._changed.notify_all()
            raise
        return model

    async def _release(self, model: ResidentModel) -> None:
        async with self._lock:
            model.in_use -= 1
            model.last_used = time.time()
            if model.in_use == 0:
                if model.retired:
                    await self._unload_locked(model, "its name now refers to another file")
                else:
                    self._arm_idle_timer(model)
                self._changed.notify_all()

    def _canonical(self, name: str, entry: ModelEntry) -> str:
        try:
            return self.store.resolve(name)
        except Exception:
            return entry.name

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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

    def _prompt_cache(self, model: ResidentModel) -> PromptCache | None:
        """The model's RAM/disk prompt cache; its disk tier outlives the engine, so prefixes
        survive idle unloads and restarts. Keyed to the exact file and KV layout."""
        settings = self.settings
        if settings.cache_ram <= 0 and (settings.cache_disk <= 0 or not settings.persist):
            return None
        key = CacheKey(model_sha256=model.entry.id, kv_layout=model.config.kv_key())
        return PromptCache(
            key,
            ram_bytes=settings.cache_ram,
            disk_bytes=settings.cache_disk if settings.persist else 0,
            disk_dir=settings.resolved_cache_dir if settings.persist else None,
            persist=settings.persist,
        )

    async def _load(self, model: ResidentModel) -> None:
        try:
            await self._make_room(model)
            model.template = self._template(model)
            started = time.perf_counter()
            model.engine = await asyncio.to_thread(
                self._engine_factory,
                model.entry.path,
                model.config,
                model.name,
                prompt_cache=self._prompt_cache(model),
            )
            model.load_seconds = time.perf_counter() - started
            model.loaded_at = time.time()
            log.info(
                "loaded %s in %.2fs (slots=%d, ctx/slot=%d, gpu layers=%d, est. %.0f MiB)",
                model.name,
                model.load_seconds,
                model.config.slots,
                model.config.ctx_per_slot,
                model.engine.model.gpu_layers,
                model.estimate.total / (1 << 20),
            )
            async with self._lock:
                model.ready.set_result(None)
                if model.in_use == 0:  # every waiter gave up (client gone) meanwhile
                    if model.retired:
                        await self._unload_locked(model, "its name now refers to another file")
                    else:
                        self._arm_idle_timer(model)
        except BaseException as exc:
            async with self._lock:
                if self._models.get(model.name) is model:
                    del self._models[model.name]
                self._retired.discard(model)
                self._changed.notify_all()
            if isinstance(exc, ModelLoadError):
                exc = LoadFailed(str(exc))
            log.error("could not load %s: %s", model.name, exc)
            if not model.ready.done():
                model.ready.set_exception(exc)
                model.ready.exception()  # mark retrieved: waiters re-raise it themselves
            if not isinstance(exc, Exception):
                raise

    def _template(self, model: ResidentModel) -> ChatTemplate:
        meta = model.entry.metadata
        override = self.model_config(model.entry).get("chat-template")
        if override is None and self.settings.chat_template_file is not None:
            override = Path(self.settings.chat_template_file).read_text(encoding="utf-8")
        return template_for(meta.architecture, meta.chat_template, override)

    def _all_locked(self) -> list[ResidentModel]:
        return [*self._models.values(), *self._retired]

    async def _make_room(self, model: ResidentModel) -> None:
        """Evict least recently used idle models until `model` fits; wait for busy ones.

        Only admitted models (loaded, or granted room and loading) count against the budget,
        so two models waiting for room at once never wait for each other.
        """
        need = model.estimate.total
        if need > self.budget:
            raise InsufficientMemory(
                f"{model.name} needs about {need / (1 << 20):.0f} MiB (weights, KV cache for "
                f"{model.config.slots} slots x {model.config.ctx_per_slot} tokens, buffers) but "
                f"the memory budget is {self.budget / (1 << 20):.0f} MiB; lower context-size "
                "or slots, or raise --memory-budget"
            )
        waited = False
        async with self._lock:
            while True:
                if self._closing:
                    raise LoadFailed("the server is shutting down")
                others = [m for m in self._all_locked() if m is not model and m.admitted]
                used = sum(m.estimate.total for m in others)
                count_ok = (
                    self.settings.max_models is None or len(others) < self.settings.max_models
                )
                if count_ok and used + need <= self.budget:
                    model.admitted = True
                    return
                idle = [m for m in others if not m.loading and not m.busy]
                if idle:
                    victim = min(idle, key=lambda m: m.last_used)
                    await self._unload_locked(victim, "evicted to make room for " + model.name)
                    continue
                if not waited:
                    log.info(
                        "%s waits for room: %d model(s) resident and busy, %.0f of %.0f MiB used",
                        model.name,
                        len(others),
                        used / (1 << 20),
                        self.budget / (1 << 20),
                    )
                    waited = True
                await self._changed.wait()

    # -- unloading -----------------------------------------------------------------------

    def _cancel_timer(self, model: ResidentModel) -> None:
        if model.idle_timer is not None:
            model.idle_timer.cancel()
            model.idle_timer = None

    def _arm_idle_timer(self, model: ResidentModel, delay: float | None = None) -> None:
        self._cancel_timer(model)
        if model.keep_alive < 0 or self._closing:
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            self._spawn(self._idle_expired(model, handle))

        handle = loop.call_later(model.keep_alive if delay is None else delay, fire)
        model.idle_timer = handle

    async def _idle_expired(self, model: ResidentModel, handle: asyncio.TimerHandle | None) -> None:
        async with self._lock:
            if model.idle_timer is not handle or model.in_use > 0:
                return  # used again (or re-armed) since this timer was set
            model.idle_timer = None
            if self._models.get(model.name) is not model:
                return
            if model.busy:
                # Requests running without a holder (should not happen): look again shortly.
                self._arm_idle_timer(model, delay=1.0)
                return
            await self._unload_locked(model, f"idle for {_format_keep_alive(model.keep_alive)}")

    async def _retire_locked(self, model: ResidentModel) -> None:
        if self._models.get(model.name) is model:
            del self._models[model.name]
        if model.busy or model.loading:
            model.retired = True
            self._retired.add(model)
        else:
            await self._unload_locked(model, "its name now refers to another file")

    async def _unload_locked(self, model: ResidentModel, reason: str) -> None:
        if self._models.get(model.name) is model:
            del self._models[model.name]
        self._retired.discard(model)
        self._cancel_timer(model)
        model.admitted = False
        engine, model.engine = model.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close, True, 30.0)
        for hook in self.on_unload:
            try:
                hook(model, reason)
            except Exception:
                log.exception("on_unload hook failed for %s", model.name)
        resident_for = time.time() - model.loaded_at if model.loaded_at else 0.0
        log.info("unloaded %s (%s; resident %.0fs)", model.name, reason, resident_for)
        self._changed.notify_all()

    async def unload(self, names: list[str] | None = None, everything: bool = False) -> list[str]:
        """Unload idle models (all, or those named); busy ones are left alone."""
        done: list[str] = []
        async with self._lock:
            targets = list(self._models.values()) if everything else []
            for name in names or []:
                targets += [m for m in self._models.values() if self.matches(m, name)]
            for model in targets:
                if model.busy or model.loading or model.name in done:
                    continue
                await self._unload_locked(model, "unload requested")
                done.append(model.name)
        return done

    def matches(self, model: ResidentModel, name: str) -> bool:
        """Whether `name` (a tag, partial name or ID) refers to resident `model`."""
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
            models = self._all_locked()
            self._models.clear()
            self._retired.clear()
            self._changed.notify_all()
        for model in models:
            self._cancel_timer(model)
            engine, model.engine = model.engine, None
            if engine is not None:
                await asyncio.to_thread(engine.close, True, grace)
                for hook in self.on_unload:
                    try:
                        hook(model, "shutdown")
                    except Exception:
                        log.exception("on_unload hook failed for %s", model.name)
                log.info("unloaded %s (shutdown)", model.name)

    # -- queries and configuration -------------------------------------------------------

    def resident(self) -> list[ResidentModel]:
        return list(self._models.values())

    def get_resident(self, name: str) -> ResidentModel | None:
        return next((m for m in self._models.values() if self.matches(m, name)), None)

    def holders_of(self, model_id: str) -> list[ResidentModel]:
        """Every resident (and retired) copy of the file with ID `model_id`."""
        return [m for m in self._all_locked() if m.entry.id == model_id]

    def model_config(self, entry: ModelEntry) -> dict[str, Any]:
        return self.store.get_config(entry.id)

    async def configure(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Persist per-model settings (applied at the next load). Raises ModelBusy while
        the model serves requests; an idle resident copy is unloaded so the next request
        loads it with the new settings. Raises ValueError for bad values."""
        entry = await asyncio.to_thread(self.store.get, name)
        clean = validate_config(changes)
        async with self._lock:
            holders = self.holders_of(entry.id)
            if any(m.busy or m.loading for m in holders):
                raise ModelBusy(f"{entry.name} is serving requests; try again when it is idle")
            merged = {**self.store.get_config(entry.id), **clean}
            merged = {k: v for k, v in merged.items() if v is not None}
            await asyncio.to_thread(self.store.set_config, entry.id, merged)
            for model in holders:
                await self._unload_locked(model, "reconfigured")
        log.info("configured %s: %s", entry.name, merged)
        return merged

    async def forget(self, name: str) -> list[ResidentModel]:
        """Before tag `name` (or full ID) is removed from the store: unload the residents
        that will lose their file or name. Raises ModelBusy (unloading nothing) if one
        of them is serving requests; idle ones are unloaded."""
        entry = await asyncio.to_thread(self.store.get, name)
        whole_file = name == entry.id or len(entry.tags) <= 1
        async with self._lock:
            doomed = [m for m in self.holders_of(entry.id) if whole_file or self.matches(m, name)]
            if any(m.busy or m.loading for m in doomed):
                raise ModelBusy(f"{entry.name} is serving requests; try again when it is idle")
            for model in doomed:
                await self._unload_locked(model, "deleted from the store")
        return doomed


# llama-server flags accepted in `runtime-flags`, and the config key each one sets.
RUNTIME_FLAGS = {
    "-c": "context-size",
    "--ctx-size": "context-size",
    "-np": "slots",
    "--parallel": "slots",
    "-ngl": "gpu-layers",
    "--gpu-layers": "gpu-layers",
    "--n-gpu-layers": "gpu-layers",
    "-sps": "similarity",
    "--slot-prompt-similarity": "similarity",
}


def _config_key(key: str) -> str:
    key = key.strip().lower().replace("_", "-")
    return "keep_alive" if key == "keep-alive" else key


def parse_runtime_flags(flags: Any) -> dict[str, Any]:
    """`["--ctx-size", "2048", "-np=2"]` -> `{"context-size": "2048", "slots": "2"}`."""
    if isinstance(flags, str):
        flags = flags.split()
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ValueError("'runtime-flags' must be a list of strings")
    out: dict[str, Any] = {}
    i = 0
    while i < len(flags):
        flag, eq, value = flags[i].partition("=")
        if flag not in RUNTIME_FLAGS:
            known = ", ".join(sorted(RUNTIME_FLAGS))
            raise ValueError(f"unsupported runtime flag {flag!r} (supported: {known})")
        if not eq:
            if i + 1 >= len(flags):
                raise ValueError(f"runtime flag {flag!r} needs a value")
            i += 1
            value = flags[i]
        out[RUNTIME_FLAGS[flag]] = value
        i += 1
    return out


def _coerce(key: str, value: Any) -> Any:
    kind = CONFIG_KEYS[key]
    if key == "gpu-layers":
        return parse_gpu_layers(value)
    if key == "keep_alive":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError
        parse_duration(value)
        return str(value)
    if kind is int:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
        return number
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if not isinstance(value, str):
        raise ValueError
    return value


def validate_config(changes: dict[str, Any]) -> dict[str, Any]:
    """Check `_configure` values (DMR spelling; `runtime-flags` translated); raises
    ValueError naming the bad key. Unknown keys are ignored; None clears a setting."""
    items = {_config_key(k): v for k, v in changes.items()}
    merged: dict[str, Any] = {}
    if items.get("runtime-flags") is not None:
        merged.update(parse_runtime_flags(items["runtime-flags"]))
    merged.update({k: v for k, v in items.items() if k in CONFIG_KEYS})
    clean: dict[str, Any] = {}
    for key, value in merged.items():
        if value is None:
            clean[key] = None
            continue
        try:
            clean[key] = _coerce(key, value)
        except (TypeError, ValueError):
            kind = "a duration like 30s, 5m or -1" if key == "keep_alive" else None
            kind = kind or ("'all' or a layer count" if key == "gpu-layers" else None)
            kind = kind or f"of type {CONFIG_KEYS[key].__name__}"
            raise ValueError(f"'{key}' must be {kind}, got {value!r}") from None
    size = clean.get("context-size")
    if size is not None and not 64 <= size <= 1 << 20:
        raise ValueError("'context-size' must be between 64 and 1048576")
    if clean.get("slots") is not None and not 1 <= clean["slots"] <= 256:
        raise ValueError("'slots' must be between 1 and 256")
    if clean.get("similarity") is not None and not 0.0 <= clean["similarity"] <= 1.0:
        raise ValueError("'similarity' must be between 0 and 1")
    return clean
