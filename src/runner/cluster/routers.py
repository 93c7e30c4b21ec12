"""Ray Serve request routers for runner replicas.

`CacheFollowingRouter` sends a request to the replica holding the longest cached prefix of
its prompt. Replicas report what they hold (`RunnerReplica.record_routing_stats`: chained
hashes of every block-aligned prefix in their slots and prompt-cache tiers); the front door
sends each request's own prefix hashes along (`ForwardedRequest.hashes`). A match counts
from `min_match_tokens` tokens or `min_match_fraction` of the prompt (a shared template
opening should not pull every user onto one replica). Reports arrive
every `request_routing_stats_period_s`, so the router also remembers what it routed in the
last `recent_ttl_s` seconds: a prompt just sent to a replica counts as held there until the
replica's next report says so itself.

A request with a cache key (OpenAI's `prompt_cache_key`) goes back to the replica that
served the key last, the client's word being better than any guess, unless that replica is
overloaded (as below) or was just found unreachable (a node lost answers nothing before Ray
declares its replicas dead): then the key is routed like any request and moves to where it
went, so keys that outgrow one replica spread out.

Load comes first when it must: a best replica already running as many requests as it has
slots (times `overload_factor`) is passed over for the least loaded one, if that one has at
least as many requests less to do (when every replica is busy, waiting where the prefix is
beats recomputing it elsewhere). With no prefix to
follow (short prompts, cold cluster, ties) the choice is power-of-two-choices, exactly
Ray's default, so uniform load is never routed worse than by the default router.

`RayDefaultRouter` and `PrefixAffinityRouter` are Ray's own power-of-two and
`PrefixCacheAffinityRouter`, only made to publish replica reports for the front door's
`/engines/ps` (every router does, in `registry`).
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from . import registry
from .forward import ForwardedRequest


class Published:
    """Mixin for every router here: register the router so the front door can read replica
    reports, and send a request addressed to one replica (`ForwardedRequest.target`, the
    front door's broadcasts) to that replica."""

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)  # type: ignore[misc]
        registry.publish(self._deployment_id.name, self)  # type: ignore[attr-defined]

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        request = _request_of(pending_request)
        if request is not None and request.target:
            # Never elsewhere: an empty rank makes Ray wait for the replica (the caller's
            # timeout ends a wait for one that is gone).
            return [[r for r in candidate_replicas if r.replica_id.unique_id == request.target]]
        return await super().choose_replicas(candidate_replicas, pending_request)  # type: ignore[misc]


def _request_of(pending: PendingRequest | None) -> ForwardedRequest | None:
    for arg in pending.args if pending is not None else ():
        if isinstance(arg, ForwardedRequest):
            return arg
    return None


class CacheFollowing(RequestRouter):
    def initialize_state(
        self,
        overload_factor: float = 1.0,
        recent_ttl_s: float = 10.0,
        min_match_tokens: int = 64,
        min_match_fraction: float = 0.5,
        **kwargs: Any,
    ) -> None:
        self._overload_factor = overload_factor
        self._recent_ttl = recent_ttl_s
        self._min_tokens = min_match_tokens
        self._min_fraction = min_match_fraction
        self._recent: dict[ReplicaID, dict[int, float]] = {}  # block hash -> when routed
        self._held: dict[ReplicaID, tuple[float, frozenset[int]]] = {}  # report time, blocks
        self._unreachable: dict[ReplicaID, float] = {}  # when a request found it unreachable
        self._keys: OrderedDict[str, ReplicaID] = OrderedDict()  # cache key -> its replica

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if len(candidate_replicas) < 2:
            return [candidate_replicas]
        request = _request_of(pending_request)
        keyed = self._keyed(request, candidate_replicas)
        if keyed is not None:
            return [[keyed], _two_choices(candidate_replicas)]
        hashes = request.hashes if request is not None else []
        scores = {r.replica_id: self._cached_blocks(r, hashes) for r in candidate_replicas}
        best = max(scores.values())
        if best == 0 or not self._worth_following(request, best):
            return [_two_choices(candidate_replicas)]
        top = [r for r in candidate_replicas if scores[r.replica_id] == best]
        lightest = min(self._load(r) for r in candidate_replicas)
        ready = [r for r in top if not self._overloaded(r, lightest)]
        if ready:  # ties between holders go to the less loaded one (Ray probes the rank)
            random.shuffle(ready)
            return [ready, _two_choices(candidate_replicas)]
        others = [r for r in candidate_replicas if r not in top]
        return [others, top] if others else [top]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:  # fmt: skip
        request = _request_of(pending_request)
        if request is not None and request.cache_key:
            self._keys[request.cache_key] = replica_id
            self._keys.move_to_end(request.cache_key)
            if len(self._keys) > 100_000:  # the least recently used keys go first
                self._keys.popitem(last=False)
        hashes = request.hashes if request is not None else []
        if hashes:
            now = time.monotonic()
            recent = self._recent.setdefault(replica_id, {})
            if len(recent) > 100_000:  # forget what has expired
                horizon = now - self._recent_ttl
                self._recent[replica_id] = recent = {h: t for h, t in recent.items() if t >= horizon}  # fmt: skip
            recent.update(dict.fromkeys(hashes, now))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._recent.pop(replica_id, None)
        self._held.pop(replica_id, None)
        for key in [k for k, r in self._keys.items() if r == replica_id]:
            del self._keys[key]

    def on_replica_actor_unavailable(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_unavailable(replica_id)
        self._unreachable[replica_id] = time.monotonic()

    # -- scoring --------------------------------------------------------------------------

    def _keyed(
        self, request: ForwardedRequest | None, candidates: list[RunningReplica]
    ) -> RunningReplica | None:
        """The replica that last served the request's cache key, unless it is overloaded
        or was just found unreachable (its node may be gone before Ray says it died)."""
        if request is None or not request.cache_key:
            return None
        home = self._keys.get(request.cache_key)
        replica = next((r for r in candidates if r.replica_id == home), None)
        if replica is None or self._lost(replica):
            return None
        lightest = min(self._load(r) for r in candidates)
        return None if self._overloaded(replica, lightest) else replica

    def _worth_following(self, request: ForwardedRequest | None, blocks: int) -> bool:
        """A shared template opening or boilerplate line is no reason to pile every user
        onto one replica: follow a prefix of some length, or most of a short prompt."""
        if request is None:
            return False
        tokens = blocks * request.block
        return tokens >= self._min_tokens or tokens >= self._min_fraction * request.n_tokens

    def _cached_blocks(self, replica: RunningReplica, hashes: list[int]) -> int:
        """How many leading blocks of the prompt the replica holds (or was just sent)."""
        if not hashes:
            return 0
        if self._lost(replica):
            return 0  # whatever it holds, do not send prompts after it for a while
        held = self._blocks(replica)
        recent = self._recent.get(replica.replica_id, {})
        horizon = time.monotonic() - self._recent_ttl
        n = 0
        for h in hashes:
            if h not in held and recent.get(h, horizon - 1) < horizon:
                break
            n += 1
        return n

    def _lost(self, replica: RunningReplica) -> bool:
        """A request found it unreachable in the last `recent_ttl_s` seconds."""
        lost = self._unreachable.get(replica.replica_id)
        return lost is not None and time.monotonic() - lost < self._recent_ttl

    def _blocks(self, replica: RunningReplica) -> frozenset[int]:
        stats = replica.routing_stats or {}
        stamp = stats.get("time", 0.0)
        cached = self._held.get(replica.replica_id)
        if cached is None or cached[0] != stamp:
            cached = (stamp, frozenset(stats.get("blocks", ())))
            self._held[replica.replica_id] = cached
        return cached[1]

    def _load(self, replica: RunningReplica) -> int:
        """Requests running or waiting there: Ray's count, else the replica's report."""
        load = self.replica_queue_len_cache.get(replica.replica_id)
        return load if load is not None else (replica.routing_stats or {}).get("load", 0)

    def _overloaded(self, replica: RunningReplica, lightest: int) -> bool:
        """No free slot there, and another replica has a slot-full (x factor) less to do:
        when every replica is busy, waiting where the prefix is beats recomputing it."""
        capacity = (replica.routing_stats or {}).get("slots") or replica.max_ongoing_requests
        margin = capacity * self._overload_factor
        load = self._load(replica)
        return load >= margin and load - lightest >= margin


class CacheFollowingRouter(Published, CacheFollowing):
    """runner's router (the default of `runner cluster serve`)."""


def _two_choices(candidates: list[RunningReplica]) -> list[RunningReplica]:
    """Ray's default: two random replicas; the router then takes the shorter queue."""
    # Shuffled even when there are only two: Ray takes the first of equally short queues.
    return random.sample(candidates, min(2, len(candidates)))


class RayDefaultRouter(Published, PowerOfTwoChoicesRequestRouter):
    """Ray Serve's default power-of-two-choices router, unchanged."""
