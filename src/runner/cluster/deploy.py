"""Deploy runner on Ray Serve: `build_apps` (the Serve applications: N runner replicas, and
the front door that routes to them) and `start` (connect to or start a Ray cluster, start Serve's HTTP proxy on
`settings.host:port`, deploy)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from runner.config import Settings

from .frontdoor import FrontDoor
from .keys import DEFAULT_BLOCK
from .replica import RunnerReplica

log = logging.getLogger(__name__)

ROUTERS = {
    "runner": "runner.cluster.routers:CacheFollowingRouter",
    "pow2": "runner.cluster.routers:RayDefaultRouter",
    "prefix": "runner.cluster.prefix_affinity:PrefixAffinityRouter",
}
APP_NAME = "runner"
REPLICAS_APP = "runner-replicas"


@dataclass
class ClusterOptions:
    replicas: int = 2
    router: str = "runner"  # a key of ROUTERS
    block: int = DEFAULT_BLOCK  # tokens per advertised prefix block
    cpus_per_replica: float | None = None  # default: --threads, else 1
    gpus_per_replica: float | None = None  # default: 1 when layers are offloaded, else 0
    stats_period_s: float = 1.0  # how often replicas report their caches
    # Custom Ray resources each replica / the front door needs: how an operator keeps
    # replicas on model-serving nodes and the front door on a node that stays up.
    replica_resources: dict[str, float] = field(default_factory=dict)
    front_door_resources: dict[str, float] = field(default_factory=dict)
    health_check_period_s: float = 2.0


def replica_resources(settings: Settings, options: ClusterOptions) -> dict[str, Any]:
    cpus = options.cpus_per_replica or float(settings.threads or 1)
    gpus = options.gpus_per_replica
    if gpus is None:
        from runner.engine import gpu_offload_supported

        gpus = 1.0 if settings.gpu_layers != 0 and gpu_offload_supported() else 0.0
    resources: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if options.replica_resources:
        resources["resources"] = dict(options.replica_resources)
    return resources


def build_apps(settings: Settings, options: ClusterOptions) -> tuple[Any, Any]:
    """(the replicas' application, the front door's)."""
    if options.router not in ROUTERS:
        raise ValueError(f"unknown router {options.router!r}; use one of {', '.join(ROUTERS)}")
    config = settings.model_dump()
    replica = serve.deployment(
        RunnerReplica,
        name="RunnerReplica",
        num_replicas=options.replicas,
        ray_actor_options=replica_resources(settings, options),
        # Up to every slot busy plus the engine's own wait queue (which answers 503 beyond).
        max_ongoing_requests=settings.slots + settings.queue_size,
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTERS[options.router],
            request_routing_stats_period_s=options.stats_period_s,
            request_routing_stats_timeout_s=max(5.0, 5 * options.stats_period_s),
        ),
        health_check_period_s=options.health_check_period_s,
        graceful_shutdown_timeout_s=30,
    )
    front = serve.deployment(
        FrontDoor,
        name="FrontDoor",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, "resources": dict(options.front_door_resources)},
        max_ongoing_requests=4096,
    )
    # Two applications: Serve allows one ingress (FastAPI) deployment per application, and
    # both the front door and every replica (runner's own app) are one.
    return replica.bind(config, options.block), front.bind(REPLICAS_APP, config, options.block)


def start(
    settings: Settings,
    options: ClusterOptions,
    address: str | None = None,
    num_cpus: float | None = None,
) -> DeploymentHandle:
    """Connect to the Ray cluster at `address` (None: start one on this machine), start
    Serve's HTTP proxy on settings.host:port and deploy; returns once every replica has
    loaded its preloaded models."""
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            per = replica_resources(settings, options)
            # One CPU of headroom: Ray LLM's prefix router keeps its tree in an actor.
            cpus = num_cpus or options.replicas * per["num_cpus"] + 1
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": _runner_env()},
            )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    replicas, front = build_apps(settings, options)
    serve.run(replicas, name=REPLICAS_APP, route_prefix=None)
    return serve.run(front, name=APP_NAME, route_prefix="/")


def _runner_env() -> dict[str, str]:
    # Replicas must import the same runner (a source checkout on PYTHONPATH included).
    keep = ("PYTHONPATH", "RUNNER_")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}
