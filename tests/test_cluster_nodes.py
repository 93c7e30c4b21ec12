"""runner on a two-node Ray cluster (Ray's own `cluster_utils.Cluster`: one head and two
worker raylets on this machine), one replica per worker node, and one node killed while
requests run: only its replica's requests fail, Serve starts the replica again on the
surviving node, and the cache-following router stops sending to the dead node and learns
the new replica's cache.

Placement is by construction, not by Ray's best-effort spreading: each worker node offers
two units of a custom `replica` resource (a replica takes one), and a placeholder actor
holds one unit on each node while the replicas are deployed, so they land one per node;
the placeholders then go, leaving the survivor room for the replacement. The head node has
no CPUs and the only `head` resource, which the front door asks for, so the front door and
Serve's proxy never share a node with a replica.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve")

import ray  # noqa: E402
from openai import OpenAI, omit  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from test_cluster import FRESH_TOPICS, STREAM_TOKENS, _stream, system_prompt  # noqa: E402

from runner.cluster.deploy import APP_NAME, REPLICAS_APP, ClusterOptions, build_apps  # noqa: E402
from runner.config import Settings  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(600)]

MODEL = "ai/gemma3"
SRC = Path(__file__).resolve().parents[1] / "src"
NODE_ARGS = {"num_cpus": 2, "object_store_memory": 80 << 20}


class TwoNodes:
    def __init__(self, cluster: Cluster, url: str) -> None:
        self.cluster = cluster
        self.url = url
        self.workers = list(cluster.worker_nodes)

    def replicas(self) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/engines/status", timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["replicas"]

    def wait_for_replicas(self, n: int, timeout: float = 300.0) -> list[dict[str, Any]]:
        """Until the front door sees `n` live replicas, each with its model loaded."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.replicas()
            rows = httpx.get(self.url + "/engines/ps", timeout=60).json()
            loaded = {row["replica"] for row in rows}
            if len(found) == n and all(r["replica_id"] in loaded for r in found):
                return found
            assert time.monotonic() < deadline, found
            time.sleep(0.5)

    def chat(self, system: str, user: str, key: str = "") -> tuple[dict[str, Any], str]:
        """The openai SDK's chat (with `prompt_cache_key` when given): (body, replica)."""
        client = OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=180)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            max_tokens=1,
            prompt_cache_key=key or omit,
        )
        return raw.http_response.json(), raw.headers["x-runner-replica"]


@ray.remote(num_cpus=0)
class Placeholder:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


@pytest.fixture
def two_nodes(models_dir: Path, tmp_path: Path) -> Iterator[TwoNodes]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "resources": {"head": 1},
            "object_store_memory": 80 << 20,
            "include_dashboard": False,
            # A dead raylet is declared dead after a few failed checks a second apart.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5},
        },
    )
    try:
        for name in ("a", "b"):
            cluster.add_node(**NODE_ARGS, resources={"replica": 2, f"node_{name}": 1})
        cluster.wait_for_nodes()
        env = {"PYTHONPATH": str(SRC), "RAY_USAGE_STATS_ENABLED": "0"}
        ray.init(address=cluster.address, logging_level="warning", runtime_env={"env_vars": env})
        holders = [
            Placeholder.options(resources={"replica": 1, f"node_{name}": 0.01}).remote()
            for name in ("a", "b")
        ]
        ray.get([h.node.remote() for h in holders])
        port = _free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        settings = Settings(
            models_dir=models_dir,
            model=[MODEL],
            threads=1,
            slots=2,
            ctx_size=1024,
            cache_ram=0,
            cache_dir=tmp_path / "kv",
            responses_dir=tmp_path / "responses",
        )
        options = ClusterOptions(
            replicas=2, replica_resources={"replica": 1}, front_door_resources={"head": 1}
        )
        replicas, front = build_apps(settings, options)
        serve.run(replicas, name=REPLICAS_APP, route_prefix=None)
        serve.run(front, name=APP_NAME, route_prefix="/")
        for holder in holders:  # the survivor now has room for a second replica
            ray.kill(holder)
        nodes = TwoNodes(cluster, f"http://127.0.0.1:{port}")
        nodes.wait_for_replicas(2)
        yield nodes
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_killed_node_fails_only_its_requests_and_its_replica_returns(
    two_nodes: TwoNodes,
) -> None:
    before = {r["replica_id"]: r for r in two_nodes.replicas()}
    worker_ids = {n.node_id: n for n in two_nodes.workers}
    assert {r["node_id"] for r in before.values()} == set(worker_ids)  # one per node

    results: dict[str, Any] = {}
    threads = []
    for topic in FRESH_TOPICS:  # new prompts: two slots each, so the router spreads them
        started = threading.Event()
        key = {"prompt_cache_key": f"user-{topic}"}  # each stream's key lives where it went
        t = threading.Thread(target=_stream, args=(two_nodes.url, topic, results, started, key))
        t.start()
        threads.append((t, started))
        assert started.wait(180), results
    assert {results[t]["replica"] for t in FRESH_TOPICS} == set(before), results
    # The stream started last has barely begun, so its node certainly dies mid-answer.
    victim = results[FRESH_TOPICS[-1]]["replica"]
    dead_node = before[victim]["node_id"]
    (survivor_node,) = set(worker_ids) - {dead_node}
    two_nodes.cluster.remove_node(worker_ids[dead_node], allow_graceful=False)
    for t, _ in threads:
        t.join(300)
    for topic in FRESH_TOPICS:
        res = results[topic]
        assert res["status"] == 200, res
        if res["replica"] != victim:
            assert res["done"] and res["error"] is None and res["chunks"] >= STREAM_TOKENS // 2, res
        elif topic == FRESH_TOPICS[-1] or not res["done"]:
            assert not res["done"] and res["error"], res  # cut off, and says so
            assert res["error"]["code"] == "replica_failed", res
        else:  # it had finished before the kill: whole
            assert res["error"] is None and res["chunks"] >= STREAM_TOKENS // 2, res

    # The streams' prompts and cache keys, the victim's last seen on the dead replica:
    # answered at once by a live replica.
    moved = ""
    for topic in FRESH_TOPICS:
        answer, replica = two_nodes.chat(system_prompt(topic), "Tell a long story.", f"user-{topic}")  # fmt: skip
        assert replica != victim and answer["choices"][0]["finish_reason"] == "length"
        moved = replica if topic == FRESH_TOPICS[-1] else moved
    # The victim's key now lives where it went: prompts sharing nothing with anything sent
    # go there for the key alone (without keys, each would be a coin toss).
    for system in ("Answer in one word.", "Be brief.", "Reply like a pirate."):
        _, replica = two_nodes.chat(system, "Name a prime.", f"user-{FRESH_TOPICS[-1]}")
        assert replica == moved

    # Serve starts the lost replica again, on the node that is left.
    after = two_nodes.wait_for_replicas(2)
    assert {r["node_id"] for r in after} == {survivor_node}, after
    (new,) = [r["replica_id"] for r in after if r["replica_id"] not in before]

    # The router learns the new replica's cache: a prompt it served comes back to it and
    # reuses the prefix. Fresh prompts first go by load (equal and idle: a fair coin), so
    # try a few until one lands there.
    for i in range(16):
        system = system_prompt(f"volcanology {i}")
        first, replica = two_nodes.chat(system, "What is lava?")
        if replica == new:
            break
    else:
        pytest.fail("no fresh prompt went to the new replica")
    again, replica = two_nodes.chat(system, "What is lava?")
    assert replica == new
    assert again["timings"]["cache_n"] >= first["timings"]["prompt_n"] // 2, again
