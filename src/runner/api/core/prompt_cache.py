"""OpenAI's prompt-cache fields, the same in Chat Completions and Responses.

`prompt_cache_key` steers slot choice: a request goes to the idle slot that last served the
same key, where its prefix most likely still is (clients use one key per agent or user).
`prompt_cache_retention: "24h"` pins the whole prompt for 24 hours, refreshed by every
request that uses it (`"in_memory"`, the default, is the automatic cache alone). What was
reused is `usage.prompt_tokens_details.cached_tokens` (Responses:
`usage.input_tokens_details.cached_tokens`), the engine's `timings.cache_n`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field

from runner.engine import GenerationRequest
from runner.engine.types import CacheBreakpoint

RETENTION_SECONDS = {"24h": 24 * 3600.0}

PromptCacheKey = Annotated[str | None, Field(None, max_length=1024)]
PromptCacheRetention = Annotated[Literal["in_memory", "24h"] | None, Field(None)]


def steer(
    key: str | None, retention: str | None, then: Callable[[GenerationRequest], None] | None
) -> Callable[[GenerationRequest], None]:
    """The engine request's customizer: `then` (the chat plan's), the cache key, and a pin
    of the whole prompt for an extended retention."""

    def apply(request: GenerationRequest) -> None:
        if then is not None:
            then(request)
        request.cache_key = key
        if retention in RETENTION_SECONDS:
            end = len(request.prompt_tokens)  # the engine pins what a slot keeps of it
            request.breakpoints = (CacheBreakpoint(end, RETENTION_SECONDS[retention]),)

    return apply
