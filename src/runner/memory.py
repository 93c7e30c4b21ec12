"""How much memory a model needs before it is loaded, from its GGUF metadata alone."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from .engine.types import EngineConfig
from .store.gguf_meta import GGUFMetadata

_MIB = 1 << 20


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def to_dict(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "kv_cache": self.kv_cache,
            "compute": self.compute,
            "total": self.total,
        }


def estimate(meta: GGUFMetadata, file_size: int, config: EngineConfig) -> MemoryEstimate:
    """Weights (the file, mmapped) + f16 KV cache for every slot + compute/output buffers.

    With `swa_full` every layer keeps the full context, so SWA layers are counted in full.
    Missing shape fields fall back to conservative guesses rather than to zero.
    """
    layers = meta.block_count or 32
    embd = meta.embedding_length or 4096
    heads = meta.head_count or 32
    heads_kv = meta.head_count_kv or heads
    head_dim = meta.key_length or (embd // max(heads, 1))
    v_dim = meta.value_length or head_dim
    kv_per_token = layers * heads_kv * (head_dim + v_dim) * 2  # K and V in f16
    kv = kv_per_token * config.n_ctx
    vocab = meta.vocab_size or 32000
    # Logits for a full batch of outputs plus the graph's scratch; measured ~1.3x of this
    # on the bundled model, so it errs on the safe side for larger ones.
    outputs = vocab * 4 * max(config.slots, 1) * 2
    scratch = config.n_ubatch * (embd * 4 + vocab * 4) + 64 * _MIB
    return MemoryEstimate(weights=file_size, kv_cache=kv, compute=outputs + scratch)


def default_budget() -> int:
    """A safe share of the RAM free now: 80% of what the OS reports available."""
    return int(psutil.virtual_memory().available * 0.8)
