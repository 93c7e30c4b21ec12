"""Prompt-prefix caching: a radix index over token sequences and a RAM/disk state cache."""

from runner.cache.radix import RadixIndex
from runner.cache.tiers import CacheEntryCorrupt, CacheHit, CacheKey, PromptCache

__all__ = ["CacheEntryCorrupt", "CacheHit", "CacheKey", "PromptCache", "RadixIndex"]
