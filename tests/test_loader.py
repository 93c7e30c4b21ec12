"""The loader's scheduling rules with a fake engine (no llama.cpp): fast and deterministic.

The real-model, real-HTTP versions of these rules are in test_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runner.config import Settings
from runner.engine import EngineConfig
from runner.loader import InsufficientMemory, Loader, LoadFailed, ModelBusy, validate_config
from runner.store import ModelStore

MIB = 1 << 20


class FakeEngine:
    def __init__(self, path: Path, config: EngineConfig, name: str, log: list[str]) -> None:
        self.name, self.config = name, config
        self.info = SimpleNamespace(gpu_layers=0)
        self.dead: str | None = None
        self.busy = False
        self.closed = False
        log.append(f"load {name}")
        self._log = log
        time.sleep(0.05)  # a load takes a moment, so concurrent requests overlap it

    def close(self, drain: bool = False, timeout: float | None = None) -> None:
        self.closed = True
        self._log.append(f"close {self.name}")


@pytest.fixture
def store(empty_models_dir: Path, make_gguf: Callable[..., Path]) -> ModelStore:
    store = ModelStore(empty_models_dir, bundled_default=False)
    store.add("a", make_gguf("a"))
    store.add("b", make_gguf("b"))
    store.add("c", make_gguf("c"))
    return store


def make_loader(store: ModelStore, log: list[str], **settings: Any) -> Loader:
    settings.setdefault("idle_timeout", -1)
    s = Settings(models_dir=store.root, **settings)

    def factory(path: Path, config: EngineConfig, name: str, **_: Any) -> FakeEngine:
        return FakeEngine(path, config, name, log)

    return Loader(s, store, factory)  # type: ignore[arg-type]


def names(loader: Loader) -> list[str]:
    return sorted(m.name for m in loader.resident())


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds. What follows a timer (an unload) also takes a hop to a
    worker thread, which a busy machine can delay well past the timer itself."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_concurrent_first_requests_share_one_load(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log)

        async def request() -> str:
            async with loader.use("a") as model:
                await asyncio.sleep(0.01)
                return model.name

        results = await asyncio.gather(*(request() for _ in range(5)))
        assert results == ["ai/a:latest"] * 5
        assert log == ["load ai/a:latest"]
        await loader.shutdown()

    run(main())


def test_two_tags_of_one_file_share_one_load(store: ModelStore) -> None:
    store.add("a2", store.get("a").path)  # same sha256, another name
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log, max_models=1)
        async with loader.use("a") as first:
            pass
        async with loader.use("a2") as second:
            assert second is first  # no second engine, no eviction of the first
        assert log == ["load ai/a:latest"]
        assert [m.name for m in loader.resident()] == ["ai/a:latest"]
        assert first.aliases == ["ai/a2:latest"]
        assert loader.get_resident("a2") is first
        await loader.forget("a")  # one name goes; the file and its engine stay
        assert loader.resident() == [first] and first.name == "ai/a2:latest"
        assert await loader.unload(["a2"]) == ["ai/a2:latest"]
        assert log[-1] == "close ai/a:latest"

    run(main())


def test_idle_timer_starts_when_the_last_holder_lets_go(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log, idle_timeout="0.2s")
        async with loader.use("a"):
            await asyncio.sleep(0.5)  # longer than the timeout: still resident while held
            assert names(loader) == ["ai/a:latest"]
        await asyncio.sleep(0.1)
        assert names(loader) == ["ai/a:latest"]  # timer runs from the release
        await eventually(lambda: log == ["load ai/a:latest", "close ai/a:latest"])
        assert names(loader) == []
        async with loader.use("a"):  # loads again
            pass
        assert log[-1] == "load ai/a:latest"
        await loader.shutdown()

    run(main())


def test_a_load_nobody_waits_for_any_more_still_gets_an_idle_timer(store: ModelStore) -> None:
    log: list[str] = []
    loading, finish_load = threading.Event(), threading.Event()

    def factory(path: Path, config: EngineConfig, name: str, **_: Any) -> FakeEngine:
        loading.set()
        finish_load.wait(30)  # until the waiter is gone
        return FakeEngine(path, config, name, log)

    async def main() -> None:
        settings = Settings(models_dir=store.root, idle_timeout="0.2s")
        loader = Loader(settings, store, factory)  # type: ignore[arg-type]
        waiter = asyncio.create_task(loader.preload("a"))
        await eventually(loading.is_set)
        waiter.cancel()  # the client went away while the model was loading
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        finish_load.set()
        # The load completes, then the idle timer unloads it: it is not resident forever.
        await eventually(lambda: log == ["load ai/a:latest", "close ai/a:latest"])
        assert names(loader) == []
        await loader.shutdown()

    run(main())


def test_reuse_before_expiry_resets_the_timer(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        # Five uses 0.4 s apart span twice the timeout; each gap leaves 0.6 s to spare.
        loader = make_loader(store, log, idle_timeout="1s")
        for _ in range(5):
            await loader.preload("a")
            await asyncio.sleep(0.4)
        assert names(loader) == ["ai/a:latest"]
        assert log == ["load ai/a:latest"]
        await loader.shutdown()

    run(main())


def test_keep_alive_zero_and_never(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log, idle_timeout="0.2s")
        await loader.configure("a", {"keep_alive": "0"})
        await loader.configure("b", {"keep_alive": "-1"})
        await loader.preload("a")
        await loader.preload("b")
        await asyncio.sleep(0.05)
        assert names(loader) == ["ai/b:latest"]
        await asyncio.sleep(0.4)
        assert names(loader) == ["ai/b:latest"]
        assert loader.resident()[0].describe()["keep_alive"] == "-1"
        await loader.shutdown()

    run(main())


def test_engine_busy_without_holder_is_not_unloaded(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log, idle_timeout="0.1s")
        model = await loader.preload("a")
        model.engine.busy = True  # e.g. a stream still draining
        await asyncio.sleep(0.3)
        assert names(loader) == ["ai/a:latest"]
        model.engine.busy = False
        await eventually(lambda: names(loader) == [])  # re-checked after about a second
        await loader.shutdown()

    run(main())


def test_max_models_waits_for_the_busy_model_then_evicts_it(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log, max_models=1)
        release_a = asyncio.Event()
        a_loaded = asyncio.Event()

        async def hold_a() -> None:
            async with loader.use("a"):
                a_loaded.set()
                await release_a.wait()

        holder = asyncio.create_task(hold_a())
        await a_loaded.wait()
        b = asyncio.create_task(loader.preload("b"))
        await eventually(lambda: len(loader.resident()) == 2)
        await asyncio.sleep(0.1)
        assert not b.done()  # waits for A: A is serving
        assert [(m.name, m.loading) for m in loader.resident()] == [
            ("ai/a:latest", False),
            ("ai/b:latest", True),
        ]
        release_a.set()
        await holder
        await b
        assert names(loader) == ["ai/b:latest"]
        assert log == ["load ai/a:latest", "close ai/a:latest", "load ai/b:latest"]
        await loader.shutdown()

    run(main())


def test_two_models_requested_at_once_with_room_for_one_do_not_deadlock(
    store: ModelStore,
) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log, max_models=1)

        async def request(name: str) -> str:
            async with loader.use(name) as model:
                await asyncio.sleep(0.05)
                return model.name

        results = await asyncio.gather(request("a"), request("b"), request("c"), request("a"))
        assert sorted(set(results)) == ["ai/a:latest", "ai/b:latest", "ai/c:latest"]
        assert len(loader.resident()) == 1
        await loader.shutdown()

    run(main())


def test_memory_budget_evicts_least_recently_used(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log)
        one = (await loader.preload("a")).estimate.total
        await loader.shutdown()
        loader = make_loader(store, log, memory_budget=int(one * 2.5))
        await loader.preload("a")
        await loader.preload("b")
        await loader.preload("a")  # b is now the least recently used
        await loader.preload("c")
        assert names(loader) == ["ai/a:latest", "ai/c:latest"]
        await loader.shutdown()

    run(main())


def test_model_bigger_than_the_budget_fails_clearly(store: ModelStore) -> None:
    async def main() -> None:
        loader = make_loader(store, [], memory_budget="1MiB")
        with pytest.raises(InsufficientMemory, match="memory budget is 1 MiB"):
            await loader.preload("a")
        assert loader.resident() == []
        await loader.shutdown()

    run(main())


def test_load_failure_reaches_every_waiter_and_is_retried(store: ModelStore) -> None:
    attempts: list[int] = []

    async def main() -> None:
        s = Settings(models_dir=store.root, idle_timeout=-1)

        def factory(path: Path, config: EngineConfig, name: str, **_: Any) -> FakeEngine:
            attempts.append(1)
            time.sleep(0.05)
            if len(attempts) == 1:
                from runner.engine import ModelLoadError

                raise ModelLoadError("corrupt")
            return FakeEngine(path, config, name, [])

        loader = Loader(s, store, factory)  # type: ignore[arg-type]
        results = await asyncio.gather(
            loader.preload("a"), loader.preload("a"), return_exceptions=True
        )
        assert all(isinstance(r, LoadFailed) for r in results)
        assert loader.resident() == []
        assert (await loader.preload("a")).engine is not None
        assert len(attempts) == 2
        await loader.shutdown()

    run(main())


def test_configure_is_refused_while_serving_and_persists(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log)
        async with loader.use("a"):
            with pytest.raises(ModelBusy):
                await loader.configure("a", {"context-size": 128})
        assert names(loader) == ["ai/a:latest"]
        config = await loader.configure("a", {"context-size": 128, "slots": 2})
        assert config == {"context-size": 128, "slots": 2}
        assert names(loader) == []  # unloaded so the next load uses the new settings
        model = await loader.preload("a")
        assert (model.config.ctx_per_slot, model.config.slots) == (128, 2)
        await loader.shutdown()
        # A fresh loader (a restart) reads it back from the store.
        loader = make_loader(ModelStore(store.root, bundled_default=False), log)
        assert (await loader.preload("a")).config.ctx_per_slot == 128
        await loader.shutdown()

    run(main())


def test_unload_and_forget_leave_busy_models_alone(store: ModelStore) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log)
        await loader.preload("b")
        async with loader.use("a"):
            assert await loader.unload(everything=True) == ["ai/b:latest"]
            with pytest.raises(ModelBusy):
                await loader.forget("ai/a:latest")
            assert names(loader) == ["ai/a:latest"]
        assert [m.name for m in await loader.forget("ai/a:latest")] == ["ai/a:latest"]
        assert names(loader) == []
        await loader.shutdown()

    run(main())


def test_a_moved_tag_retires_the_old_copy_once_idle(
    store: ModelStore, make_gguf: Callable[..., Path]
) -> None:
    log: list[str] = []

    async def main() -> None:
        loader = make_loader(store, log)
        old_id = store.get("a").id
        async with loader.use("a") as old:
            store.add("a", make_gguf("other", fill=1.0))
            new = await loader.preload("a")
            assert new.entry.id != old_id
            assert old.engine is not None  # still serving
        assert old.engine is None
        assert [m.entry.id for m in loader.resident()] == [new.entry.id]
        await loader.shutdown()

    run(main())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context-size": "big"}, "context-size"),
        ({"context-size": 10}, "between 64"),
        ({"slots": 0}, "slots"),
        ({"similarity": 2}, "similarity"),
        ({"keep_alive": "soon"}, "keep_alive"),
        ({"gpu-layers": -5}, "gpu-layers"),
        ({"runtime-flags": ["--mlock"]}, "unsupported runtime flag"),
        ({"runtime-flags": ["-c"]}, "needs a value"),
    ],
)
def test_validate_config_rejects(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_config(changes)


def test_validate_config_accepts_dmr_spellings() -> None:
    assert validate_config(
        {
            "model": "x",
            "context_size": 2048,
            "keep-alive": 0,
            "runtime-flags": ["--ctx-size", "1024", "-np=2", "-ngl", "all"],
            "mode": "completion",
        }
    ) == {"context-size": 2048, "slots": 2, "gpu-layers": -1, "keep_alive": "0"}
