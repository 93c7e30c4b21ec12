"""Pieces of the Ray cluster support that need no cluster: the radix index's block summary,
`runner serve` staying free of Ray, and the cache-following router's choices."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from runner.cache.radix import RadixIndex


def test_block_hashes_summarize_every_aligned_prefix() -> None:
    rng = random.Random(7)
    base = [rng.randrange(1000) for _ in range(100)]
    keys = [base[:70] + [rng.randrange(1000) for _ in range(n)] for n in (0, 5, 40, 90)]
    keys.append([rng.randrange(1000) for _ in range(33)])
    index: RadixIndex[int] = RadixIndex()
    for i, key in enumerate(keys):
        index.insert(key, i)
    for block in (1, 16, 32):
        expected = {h for key in keys for h in RadixIndex.prefix_hashes(key, block)}
        assert index.block_hashes(block) == expected
    # A prompt sharing 70 tokens with the cached keys matches exactly 70 // 16 blocks.
    held = index.block_hashes(16)
    prompt = RadixIndex.prefix_hashes(base[:70] + [-1] * 50, 16)
    matched = next(i for i, h in enumerate(prompt) if h not in held)
    assert matched == 70 // 16
    assert RadixIndex.prefix_hashes(base[:15], 16) == []


def test_runner_serve_does_not_import_ray() -> None:
    code = (
        "import sys, runner.cli, runner.api.server, runner.api.app\n"
        "runner.cli.build_parser()\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----- the cache-following router's choices (fake replicas: pure routing logic) -------------

BLOCK = 16


class FakeReplica:
    def __init__(self, name: str, blocks: list[int], load: int = 0, slots: int = 2) -> None:
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(name, DeploymentID(name="RunnerReplica", app_name="t"))
        self.routing_stats = {"blocks": blocks, "slots": slots, "load": load, "time": 1.0}
        self.max_ongoing_requests = 66


def _router() -> Any:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from runner.cluster.routers import CacheFollowingRouter

    router = CacheFollowingRouter(
        deployment_id=DeploymentID(name="RunnerReplica", app_name="t"),
        handle_source=DeploymentHandleSource.UNKNOWN,
    )
    router.initialize_state()
    return router


def _pending(tokens: list[int]) -> Any:
    from runner.cluster.forward import ForwardedRequest

    request = ForwardedRequest("POST", "/v1/chat/completions", b"", [], b"")
    request.hashes = RadixIndex.prefix_hashes(tokens, BLOCK)
    request.block, request.n_tokens = BLOCK, len(tokens)
    return SimpleNamespace(args=[request], kwargs={})


def _choose(router: Any, replicas: list[FakeReplica], tokens: list[int]) -> list[list[str]]:
    ranks = asyncio.run(router.choose_replicas(replicas, _pending(tokens)))
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


def test_router_follows_the_longest_cached_prefix() -> None:
    pytest.importorskip("ray.serve")
    prompt = list(range(300))
    a = FakeReplica("a", RadixIndex.prefix_hashes(prompt[:40], BLOCK))
    b = FakeReplica("b", RadixIndex.prefix_hashes(prompt[:200], BLOCK))
    c = FakeReplica("c", [])
    assert _choose(_router(), [a, b, c], prompt)[0] == ["b"]
    # Only a short shared opening (one block of a 300-token prompt): not worth following,
    # so power-of-two-choices between two random replicas.
    opening = FakeReplica("d", RadixIndex.prefix_hashes(prompt[:16], BLOCK))
    ranks = _choose(_router(), [opening, c, FakeReplica("e", [])], prompt)
    assert len(ranks) == 1 and len(ranks[0]) == 2


def test_router_leaves_a_busy_holder_only_for_a_much_lighter_replica() -> None:
    pytest.importorskip("ray.serve")
    prompt = list(range(300))
    held = RadixIndex.prefix_hashes(prompt, BLOCK)
    # The holder has no free slot and the other replica is idle: least loaded wins.
    assert _choose(_router(), [FakeReplica("a", held, load=2), FakeReplica("b", [])], prompt)[0] == ["b"]  # fmt: skip
    # Both busy (one request apart): waiting where the prefix is beats recomputing it.
    assert _choose(_router(), [FakeReplica("a", held, load=3), FakeReplica("b", [], load=2)], prompt)[0] == ["a"]  # fmt: skip


def test_router_remembers_what_it_just_routed() -> None:
    pytest.importorskip("ray.serve")
    prompt = list(range(300))
    router = _router()
    a, b = FakeReplica("a", []), FakeReplica("b", [])
    assert len(_choose(router, [a, b], prompt)[0]) == 2  # nothing known yet
    router.on_request_routed(_pending(prompt), b.replica_id, None)
    # Before b's next report lists the prefix, the router already sends the user back.
    assert _choose(router, [a, b], prompt[:250] + [-1] * 50)[0] == ["b"]


def test_prompt_cache_summary_covers_its_entries(tmp_path: Any) -> None:
    from runner.cache import CacheKey, PromptCache

    cache = PromptCache(CacheKey("m" * 64, "layout"), 1 << 20, 1 << 20, tmp_path)
    try:
        cache.put(list(range(100)), b"state" * 10)
        assert cache.block_hashes(16) == set(RadixIndex.prefix_hashes(range(100), 16))
    finally:
        cache.close()


def test_every_router_choice_names_a_publishing_request_router() -> None:
    pytest.importorskip("ray.serve")
    from ray._common.utils import import_attr
    from ray.serve.request_router import RequestRouter

    from runner.cluster.deploy import ROUTERS
    from runner.cluster.routers import Published

    for path in ROUTERS.values():
        router = import_attr(path.replace(":", "."))
        assert issubclass(router, RequestRouter) and issubclass(router, Published), path


def test_custom_resources_place_replicas_and_the_front_door() -> None:
    pytest.importorskip("ray.serve")
    from runner.cli import build_parser
    from runner.cluster.deploy import ClusterOptions, replica_resources
    from runner.config import Settings

    argv = ["cluster", "serve", "--replica-resource", "model_node=0.5", "--replica-resource", "big"]  # fmt: skip
    args = build_parser().parse_args([*argv, "--front-door-resource", "head=1"])
    assert dict(args.replica_resource) == {"model_node": 0.5, "big": 1.0}
    assert dict(args.front_door_resource) == {"head": 1.0}
    for bad in ("=2", "gpu=0", "gpu=x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["cluster", "serve", "--replica-resource", bad])
    options = ClusterOptions(replica_resources={"model_node": 0.5}, cpus_per_replica=2, gpus_per_replica=0)  # fmt: skip
    assert replica_resources(Settings(), options) == {"num_cpus": 2, "num_gpus": 0, "resources": {"model_node": 0.5}}  # fmt: skip
    assert "resources" not in replica_resources(Settings(), ClusterOptions(gpus_per_replica=0))


def test_an_unreachable_replica_loses_its_prefixes_and_cache_keys_for_a_while() -> None:
    """A node that is gone answers nothing before Ray declares its replicas dead: what they
    held is not followed meanwhile, neither a prefix nor a `prompt_cache_key`."""
    pytest.importorskip("ray.serve")
    from runner.cluster.forward import ForwardedRequest

    prompt = list(range(300))
    router = _router()
    a, b = FakeReplica("a", RadixIndex.prefix_hashes(prompt, BLOCK)), FakeReplica("b", [])
    keyed = ForwardedRequest("POST", "/v1/chat/completions", b"", [], b"", cache_key="k")
    keyed.hashes, keyed.block, keyed.n_tokens = RadixIndex.prefix_hashes(prompt, BLOCK), BLOCK, 300  # fmt: skip
    pending = SimpleNamespace(args=[keyed], kwargs={})
    router.on_request_routed(pending, a.replica_id, None)
    ranks = asyncio.run(router.choose_replicas([a, b], pending))
    assert [r.replica_id.unique_id for r in ranks[0]] == ["a"]
    router.on_replica_actor_unavailable(a.replica_id)
    for _ in range(5):  # power of two over both: never a rank of `a` alone first
        ranks = asyncio.run(router.choose_replicas([a, b], pending))
        assert len(ranks) == 1 and len(ranks[0]) == 2
    assert _choose(router, [a, b], prompt)[0] != ["a"]


def test_a_broadcast_stops_waiting_for_a_replica_that_left() -> None:
    """A call addressed to one replica waits for it; once the router no longer lists it
    (its node was lost), the broadcast gives up on it at once instead of after minutes."""
    pytest.importorskip("ray.serve")
    from dataclasses import replace

    from runner.cluster import frontdoor, registry
    from runner.cluster.forward import ForwardedRequest

    class Handle:
        deployment_name = "units-broadcast"

        def __init__(self) -> None:
            self.handle_http = SimpleNamespace(remote=self.remote)

        def options(self, **_: Any) -> Handle:
            return self

        def remote(self, request: ForwardedRequest) -> Any:
            async def answer() -> Any:
                if request.target == "alive":
                    yield [{"type": "http.response.start", "status": 200, "headers": []}]
                    yield [{"type": "http.response.body", "body": b"{}"}]
                else:
                    await asyncio.Event().wait()  # Ray waits for the addressed replica
                    yield []

            return answer()

    alive = FakeReplica("alive", [])
    alive.node_id = "n"  # type: ignore[attr-defined]
    registry.publish("units-broadcast", SimpleNamespace(curr_replicas={alive.replica_id: alive}))
    app = frontdoor.FrontDoorApp(Handle(), None, None)  # type: ignore[arg-type]
    request = ForwardedRequest("POST", "/engines/unload", b"", [], b"{}")

    async def run() -> None:
        start, body = await app._collect(replace(request, target="alive"))
        assert start["status"] == 200 and body == b"{}"
        began = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match="left the deployment"):
            await app._collect(replace(request, target="gone"))
        assert asyncio.get_running_loop().time() - began < frontdoor.BROADCAST_TIMEOUT_S / 2

    asyncio.run(run())
