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
from typing import Any

from .cache import CacheKey, PromptCache
from .cache.layouts import disk_share, prune_layouts
from .chat import ChatTemplate
from .config import Settings
from .engine import Engine, EngineConfig, ModelLoadError
from .load_plan import draft_file, engine_config, lora_files
from .memory import default_budget, estimate
from .model_config import chat_template, draft_model_file, lora_adapters, validate_config
from .resident import (
    InsufficientMemory,
    LoaderError,
    LoadFailed,
    ModelBusy,
    ResidentKey,
    ResidentModel,
    format_keep_alive,
    template_key,
)
from .store import ModelEntry, ModelStore

__all__ = [
    "InsufficientMemory",
    "LoadFailed",
    "Loader",
    "LoaderError",
    "ModelBusy",
    "ResidentModel",
    "validate_config",
]

log = logging.getLogger(__name__)


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
        # Keyed by blob and load settings: every name of one file shares one engine.
        self._models: dict[ResidentKey, ResidentModel] = {}
        self._retired: set[ResidentModel] = set()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition(self._lock)
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()  # strong refs: the loop keeps weak ones
        # One prompt cache per model file and KV layout, kept across unloads and reloads.
        self._caches: dict[CacheKey, PromptCache] = {}
        # The last engine failure per model, shown by /engines/status.
        self.failures: dict[str, dict[str, Any]] = {}
        self.on_unload: list[Callable[[ResidentModel, str], None]] = []

    # -- the way in ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str, context_size: int | None = None) -> AsyncIterator[ResidentModel]:
        """Hold model `name` (loading it if needed) for the duration of the block.
        `context_size` (tokens per slot, e.g. Ollama's `num_ctx`) overrides the configured
        one: a different size is another load of the same file, as Ollama reloads for it."""
        model = await self._acquire(name, context_size)
        try:
            yield model
        finally:
            await self._release(model)

    async def preload(self, name: str) -> ResidentModel:
        async with self.use(name) as model:
            return model

    async def _acquire(self, name: str, context_size: int | None = None) -> ResidentModel:
        entry = await asyncio.to_thread(self.store.get, name)  # may materialize the bundle
        tag = name if name in entry.tags else self._canonical(name, entry)
        cfg = await asyncio.to_thread(self.store.get_config, tag)  # this name's, not the file's
        draft = await asyncio.to_thread(self._draft_file, entry, cfg)
        lora = await asyncio.to_thread(self._lora_files, entry, cfg)
        async with self._lock:
            if self._closing:
                raise LoadFailed("the server is shutting down")
            for stale in [m for m in self._models.values() if m.name == tag]:
                if stale.entry.id != entry.id:  # the tag was moved to another file
                    await self._retire_locked(stale, "its name now refers to another file")
            config, keep_alive = engine_config(self.settings, entry, cfg, draft, context_size, lora)
            rendering = template_key(cfg)
            model = self._models.get((entry.id, config, rendering))
            if model is not None and model.engine is not None and model.engine.dead:
                # A failed engine refuses work; replace it, as DMR evicts a defunct runner.
                reason = model.engine.dead
                self.failures[model.name] = {"error": reason, "at": time.time()}
                log.error("%s: engine failed (%s); loading it again", model.name, reason)
                await self._retire_locked(model, "its engine failed")
                model = None
            if model is None:
                model = self._new_resident(tag, entry, config, keep_alive)
                model.template_key = rendering
                self._models[model.key] = model
                log.info("loading %s (%s)", tag, entry.short_id)
                self._spawn(self._load(model))
            elif tag != model.name and tag not in model.aliases:
                model.aliases.append(tag)
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
                    await self._unload_locked(model, model.retire_reason)
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

    def _draft_file(self, entry: ModelEntry, cfg: dict[str, Any]) -> str | None:
        try:
            return draft_file(self.settings, self.store, cfg)
        except ValueError as exc:
            raise LoadFailed(f"cannot load {entry.name}: {exc}") from None

    def _lora_files(self, entry: ModelEntry, cfg: dict[str, Any]) -> tuple[tuple[str, float], ...]:
        try:
            return lora_files(self.settings, self.store, entry, cfg)
        except ValueError as exc:
            raise LoadFailed(f"cannot load {entry.name}: {exc}") from None

    def _new_resident(
        self, tag: str, entry: ModelEntry, config: EngineConfig, keep_alive: float
    ) -> ResidentModel:
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
        if key in self._caches:
            return self._caches[key]
        self._caches[key] = cache = PromptCache(
            key,
            ram_bytes=settings.cache_ram,
            disk_bytes=self._disk_share(key) if settings.persist else 0,
            disk_dir=settings.resolved_cache_dir if settings.persist else None,
            persist=settings.persist,
            disk_reserve=settings.cache_disk_reserve,
            pin_share=settings.cache_pins,
            bytes_per_token=model.estimate.kv_cache / max(1, model.config.n_ctx),
        )
        return cache

    def _disk_share(self, key: CacheKey) -> int:
        """One disk budget per model file (`cache/layouts.py`): close the caches of this
        model's layouts that no resident uses, delete every unused layout's files, and give
        `key` what the layouts still in use leave. Runs on a worker thread (`_start_engine`)."""
        sha = key.model_sha256
        in_use = {m.config.kv_key() for m in list(self._models.values()) if m.entry.id == sha}
        for other in [k for k in list(self._caches) if k.model_sha256 == sha]:
            if other.kv_layout not in in_use:
                self._caches.pop(other).close(self.settings.shutdown_grace)
        same_file = [c for k, c in list(self._caches.items()) if k.model_sha256 == sha]
        keep = [key.kv_layout, *(c.key.kv_layout for c in same_file)]
        prune_layouts(self.settings.resolved_cache_dir, sha, keep)
        taken = (c.stats()["disk"]["capacity_bytes"] for c in same_file)
        return disk_share(self.settings.cache_disk, taken)

    async def _load(self, model: ResidentModel) -> None:
        try:
            await self._make_room(model)
            model.template = self._template(model)
            started = time.perf_counter()
            model.engine = await asyncio.to_thread(self._start_engine, model)
            model.load_seconds = time.perf_counter() - started
            model.loaded_at = time.time()
            log.info(
                "loaded %s in %.2fs (slots=%d, ctx/slot=%d, gpu layers=%d, est. %.0f MiB)",
                model.name,
                model.load_seconds,
                model.config.slots,
                model.config.ctx_per_slot,
                model.engine.info.gpu_layers,
                model.estimate.total / (1 << 20),
            )
            async with self._lock:
                model.ready.set_result(None)
                if model.in_use == 0:  # every waiter gave up (client gone) meanwhile
                    if model.retired:
                        await self._unload_locked(model, model.retire_reason)
                    else:
                        self._arm_idle_timer(model)
        except BaseException as exc:
            async with self._lock:
                self._forget_locked(model)
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

    def _start_engine(self, model: ResidentModel) -> Engine:
        # On a worker thread: opening the prompt cache scans its directory.
        cache = self._prompt_cache(model)
        return self._engine_factory(model.entry.path, model.config, model.name, prompt_cache=cache)

    def _template(self, model: ResidentModel) -> ChatTemplate:
        meta = model.entry.metadata
        config = self.store.get_config(model.name)
        template_file = self.settings.chat_template_file
        return chat_template(meta.architecture, meta.chat_template, config, template_file)

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
            if self._models.get(model.key) is not model:
                return
            if model.busy:
                # Requests running without a holder (should not happen): look again shortly.
                self._arm_idle_timer(model, delay=1.0)
                return
            await self._unload_locked(model, f"idle for {format_keep_alive(model.keep_alive)}")

    def _forget_locked(self, model: ResidentModel) -> None:
        if self._models.get(model.key) is model:
            del self._models[model.key]

    async def _retire_locked(self, model: ResidentModel, reason: str) -> None:
        self._forget_locked(model)
        if model.busy or model.loading:
            model.retired = True
            model.retire_reason = reason
            self._retired.add(model)
        else:
            await self._unload_locked(model, reason)

    async def _unload_locked(self, model: ResidentModel, reason: str) -> None:
        self._forget_locked(model)
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
            for model in dict.fromkeys(targets):
                if model.busy or model.loading or self._models.get(model.key) is not model:
                    continue
                await self._unload_locked(model, "unload requested")
                done.append(model.name)
        return done

    def matches(self, model: ResidentModel, name: str) -> bool:
        """Whether `name` (a tag, partial name or ID) refers to resident `model`."""
        if name in (model.name, model.entry.id, *model.aliases):
            return True
        try:
            return self.store.entry(name).id == model.entry.id
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
        # Prompt-cache writes run on their own threads; give them the rest of the grace.
        for cache in self._caches.values():
            await asyncio.to_thread(cache.close, grace)

    # -- queries and configuration -------------------------------------------------------

    def resident(self) -> list[ResidentModel]:
        return list(self._models.values())

    def prompt_caches(self) -> list[PromptCache]:
        """Every model's prompt cache opened since start (each outlives unloads)."""
        return list(self._caches.values())

    def get_resident(self, name: str) -> ResidentModel | None:
        return next((m for m in self._models.values() if self.matches(m, name)), None)

    def holders_of(self, model_id: str) -> list[ResidentModel]:
        """Every resident (and retired) copy of the file with ID `model_id`."""
        return [m for m in self._all_locked() if m.entry.id == model_id]

    def model_config(self, entry: ModelEntry, name: str | None = None) -> dict[str, Any]:
        """The per-name config of `name` (default: the entry's primary name)."""
        return self.store.get_config(name or entry.name)

    async def configure(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Persist per-model settings (applied at the next load). Raises ModelBusy while
        the model serves requests; an idle resident copy is unloaded so the next request
        loads it with the new settings. Raises ValueError for bad values."""
        entry = await asyncio.to_thread(self.store.get, name)
        clean = validate_config(changes)
        if clean.get("draft-model"):
            await asyncio.to_thread(draft_model_file, self.store, clean["draft-model"])
        if clean.get("lora"):  # each a LoRA GGUF made for this model's architecture
            arch = entry.metadata.architecture
            await asyncio.to_thread(lora_adapters, self.store, clean["lora"], arch, False)
        async with self._lock:
            holders = self.holders_of(entry.id)
            if any(m.busy or m.loading for m in holders):
                raise ModelBusy(f"{entry.name} is serving requests; try again when it is idle")
            tag = name if name in entry.tags else self._canonical(name, entry)
            merged = {**self.store.get_config(tag), **clean}
            merged = {k: v for k, v in merged.items() if v is not None}
            await asyncio.to_thread(self.store.set_config, tag, merged)
            for model in holders:
                await self._unload_locked(model, "reconfigured")
        log.info("configured %s: %s", entry.name, merged)
        return merged

    async def forget(self, name: str) -> list[ResidentModel]:
        """Before tag `name` (or full ID) is removed from the store: unload the residents
        that will lose their file or name. Raises ModelBusy (unloading nothing) if one
        of them is serving requests; idle ones are unloaded."""
        entry = await asyncio.to_thread(self.store.entry, name)  # works with a broken file
        whole_file = name == entry.id or len(entry.tags) <= 1
        async with self._lock:
            if not whole_file:  # the file stays under its other names, and so does its engine
                tag = self._canonical(name, entry)
                for model in self.holders_of(entry.id):
                    model.drop_name(tag, [t for t in entry.tags if t != tag])
                return []
            doomed = self.holders_of(entry.id)
            if any(m.busy or m.loading for m in doomed):
                raise ModelBusy(f"{entry.name} is serving requests; try again when it is idle")
            for model in doomed:
                await self._unload_locked(model, "deleted from the store")
        return doomed
