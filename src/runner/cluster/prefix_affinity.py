"""Ray Serve LLM's `PrefixCacheAffinityRouter` (text-prefix guessing kept in a tree actor),
for comparison with runner's cache-following router. A module of its own because importing
it pulls in `ray.llm`."""

from __future__ import annotations

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)

from .routers import Published


class PrefixAffinityRouter(Published, PrefixCacheAffinityRouter):
    """Unchanged, but publishes replica reports for `/engines/ps`."""
