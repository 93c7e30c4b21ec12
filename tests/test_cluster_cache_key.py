"""The cache-following router keeps a `prompt_cache_key` on the replica that served it, and
lets it move when that replica is overloaded (fake replicas, Ray's router classes)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from test_cluster_units import FakeReplica, _router

from runner.cluster.forward import ForwardedRequest, cache_key_of


def keyed(key: str, prompt: str = "") -> Any:
    request = ForwardedRequest("POST", "/v1/chat/completions", b"", [], b"")
    request.cache_key, request.prompt = key, prompt
    return SimpleNamespace(args=[request], kwargs={})


def choose(router: Any, replicas: list[FakeReplica], key: str) -> list[list[str]]:
    ranks = asyncio.run(router.choose_replicas(replicas, keyed(key)))
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


def test_a_cache_key_stays_on_its_replica_until_that_one_is_overloaded() -> None:
    pytest.importorskip("ray.serve")
    router = _router()
    replicas = [FakeReplica(name, []) for name in "abc"]
    assert len(choose(router, replicas, "agent-1")[0]) == 2  # unknown key: power of two
    router.on_request_routed(keyed("agent-1"), replicas[2].replica_id, None)
    for _ in range(5):  # (not a lucky draw of the two random choices)
        assert choose(router, replicas, "agent-1")[0] == ["c"]
    assert len(choose(router, replicas, "agent-2")[0]) == 2  # other keys are not pulled
    # Its replica has no free slot and another is idle: the key is routed like any other.
    busy = [FakeReplica("a", []), FakeReplica("b", []), FakeReplica("c", [], load=2)]
    assert len(choose(router, busy, "agent-1")[0]) == 2
    router.on_request_routed(keyed("agent-1"), busy[0].replica_id, None)
    assert choose(router, busy, "agent-1")[0] == ["a"]  # and moves with it
    router.on_replica_actor_died(busy[0].replica_id)
    assert len(choose(router, busy[1:], "agent-1")[0]) == 2


def test_the_front_door_reads_the_key() -> None:
    assert cache_key_of(b'{"prompt_cache_key": "u-7", "messages": []}') == "u-7"
    assert cache_key_of(b'{"prompt_cache_key": 7}') == ""
    assert cache_key_of(b"not json") == "" and cache_key_of(b"[1]") == ""
