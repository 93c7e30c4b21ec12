"""How much memory a model needs before it is loaded, from its GGUF metadata alone."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import psutil

from .engine.types import EngineConfig
from .store.gguf_meta import GGUFMetadata

_MIB = 1 << 20
log = logging.getLogger(__name__)

# ggml_backend_dev_type
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


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
    """Weights (the file, mmapped) + KV cache for every slot, in the configured K and V types,
    + compute/output buffers.

    With `swa_full` every layer keeps the full context, so SWA layers are counted in full.
    Missing shape fields fall back to conservative guesses rather than to zero.
    """
    layers = meta.block_count or 32
    embd = meta.embedding_length or 4096
    heads = meta.head_count or 32
    heads_kv = meta.head_count_kv or heads
    head_dim = meta.key_length or (embd // max(heads, 1))
    v_dim = meta.value_length or head_dim
    k_bytes = cache_type_bytes(config.cache_type_k)
    v_bytes = cache_type_bytes(config.cache_type_v)
    kv_layers = layers if meta.attention_layers is None else meta.attention_layers
    kv_per_token = int(kv_layers * heads_kv * (head_dim * k_bytes + v_dim * v_bytes))
    kv = kv_per_token * config.n_ctx
    if meta.recurrent_state_bytes:
        # One state per slot, plus the checkpoints each slot may hold (engine/checkpoints.py).
        kv += meta.recurrent_state_bytes * config.slots * (1 + config.state_checkpoints)
    vocab = meta.vocab_size or 32000
    # Logits for a full batch of outputs plus the graph's scratch; measured ~1.3x of this
    # on the bundled model, so it errs on the safe side for larger ones.
    outputs = vocab * 4 * max(config.slots, 1) * 2
    scratch = config.n_ubatch * (embd * 4 + vocab * 4) + 64 * _MIB
    weights = file_size
    if config.draft_model:
        # The draft's own shape is not read here; its KV is priced as the target's, scaled by
        # the files' sizes (a draft is meant to be the smaller one).
        draft = os.path.getsize(config.draft_model)
        weights += draft
        kv += int(kv * min(1.0, draft / max(file_size, 1)))
        outputs *= 2
    return MemoryEstimate(weights=weights, kv_cache=kv, compute=outputs + scratch)


def cache_type_bytes(cache_type: str) -> float:
    """Bytes per element of a KV cache type: 2 for f16, 34/32 for q8_0, 18/32 for q4_0."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[cache_type.upper()]]
    return size / block


@dataclass(frozen=True)
class Device:
    """A compute device llama.cpp's backends report."""

    index: int
    name: str
    description: str
    type: str
    memory_free: int
    memory_total: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "memory_free": self.memory_free,
            "memory_total": self.memory_total,
        }


@functools.cache
def _ggml() -> Any:
    """libggml from the llama_cpp wheel, with the device-enumeration functions typed."""
    import llama_cpp

    from .engine.model import init_backend

    init_backend()
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml.so"))
    ptr, size_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_get.restype = ptr
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ptr]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ptr]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [ptr, size_p, size_p]
    return lib


def devices() -> list[Device]:
    """Every device of llama.cpp's loaded backends (CPU included), with free/total memory.
    Empty if the library does not expose the device API."""
    try:
        lib = _ggml()
    except (OSError, AttributeError) as exc:
        log.debug("device enumeration unavailable: %s", exc)
        return []
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            Device(
                index=i,
                name=(lib.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(
                    "utf-8", "replace"
                ),
                type=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "unknown"),
                memory_free=int(free.value),
                memory_total=int(total.value),
            )
        )
    return out


def default_budget() -> int:
    """A safe share of the memory free now: 80% of the free VRAM of the GPUs when llama.cpp
    offloads to them (layers go there by default), else 80% of the RAM the OS reports
    available."""
    from .engine.model import gpu_offload_supported

    ram = int(psutil.virtual_memory().available * 0.8)
    try:
        if not gpu_offload_supported():
            return ram
        vram = sum(d.memory_free for d in devices() if d.type == "gpu")
    except Exception as exc:  # never let a probe stop the server from starting
        log.debug("could not read GPU memory: %s", exc)
        return ram
    return int(vram * 0.8) if vram > 0 else ram
