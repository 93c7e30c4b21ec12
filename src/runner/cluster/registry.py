"""Which request router serves each deployment in this process, so the front door can read
the replica reports the router receives. Its own module because Ray ships a router's module
to the handle's process by value (a copy with its own globals): this one travels by name."""

from __future__ import annotations

from typing import Any

_ROUTERS: dict[str, Any] = {}  # deployment name -> its RequestRouter


def publish(deployment: str, router: Any) -> None:
    _ROUTERS[deployment] = router


def replica_reports(deployment: str) -> list[dict[str, Any]] | None:
    """Latest report of every live replica of `deployment` (without its block hashes), or
    None before a request created the router."""
    router = _ROUTERS.get(deployment)
    if router is None:
        return None
    reports = []
    for replica_id, replica in list(router.curr_replicas.items()):
        stats = dict(replica.routing_stats or {})
        stats.pop("blocks", None)
        reports.append({"replica_id": replica_id.unique_id, "node_id": replica.node_id, **stats})
    return reports
