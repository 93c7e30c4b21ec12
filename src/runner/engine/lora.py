"""LoRA adapters: loaded with the model, applied per decode call.

llama.cpp applies adapters to a whole context, so an engine step whose rows ask for
different adapter sets is decoded in one call per set (executor.py). A set is written as
`LoraSet`: (adapter index, scale) pairs in index order without zero scales, since a zero
scale adds nothing (A·B·0 is exactly zero) and two spellings of one set must match as one
in the slots and caches, which reuse KV only between requests of the same set.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import llama_cpp

from .model import LlamaModel, ModelLoadError
from .types import InvalidRequest

LoraSet = tuple[tuple[int, float], ...]
# Scales a request or `POST /lora-adapters` may ask for (llama-server takes any float; one
# this large already swamps the base weights).
MAX_SCALE = 100.0


def lora_set(scales: Mapping[int, float] | Iterable[tuple[int, float]]) -> LoraSet:
    """The canonical set of `{index: scale}`: sorted, zero scales left out."""
    items = scales.items() if isinstance(scales, Mapping) else scales
    return tuple(sorted((int(i), float(s)) for i, s in items if s != 0.0))


def adapter_architecture(path: str | Path) -> str:
    """The architecture a LoRA GGUF was made for; ValueError when the file is not one."""
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise ValueError(f"{Path(path).name} is not a GGUF file ({exc})") from None

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")

    if text("general.type") != "adapter" or text("adapter.type") != "lora":
        raise ValueError(f"{Path(path).name} is not a LoRA adapter GGUF")
    return text("general.architecture") or ""


@dataclass
class LoraAdapter:
    """One adapter file loaded for a model; freed with the model."""

    path: str
    scale: float  # the configured scale; requests and POST /lora-adapters pick their own
    handle: Any  # llama.cpp's `llama_adapter_lora *`


def load_adapters(model: LlamaModel, specs: Sequence[tuple[str, float]]) -> list[LoraAdapter]:
    """Load each (file, scale) for `model`; ModelLoadError names a file llama.cpp refused
    (not an adapter, another architecture, tensors of other shapes)."""
    out: list[LoraAdapter] = []
    for path, scale in specs:
        handle = llama_cpp.llama_adapter_lora_init(model.handle, str(path).encode())
        if not handle:
            raise ModelLoadError(
                f"llama.cpp could not load LoRA adapter {Path(path).name} for "
                f"{model.path.name}: not a LoRA GGUF, or made for another model"
            )
        out.append(LoraAdapter(str(path), scale, handle))
    return out


def check_request_set(requested: Sequence[tuple[int, float]], n_adapters: int) -> LoraSet:
    """A request's `lora` list as a set: ids must name loaded adapters, scales be finite."""
    scales: dict[int, float] = {}
    for ident, scale in requested:
        if not 0 <= ident < n_adapters:
            loaded = f"0..{n_adapters - 1}" if n_adapters else "none"
            raise InvalidRequest(f"no LoRA adapter with id {ident} (loaded ids: {loaded})")
        if not -MAX_SCALE <= scale <= MAX_SCALE:  # NaN fails too
            raise InvalidRequest(f"a LoRA scale must be within ±{MAX_SCALE:g}")
        scales[ident] = scale
    return lora_set(scales)


class LoraSwitch:
    """Sets a context's adapters, only when the wanted set differs from the one applied."""

    def __init__(self, adapters: Sequence[LoraAdapter]) -> None:
        self.adapters = adapters
        self.applied: LoraSet = ()

    def apply(self, ctx: llama_cpp.llama_context_p, wanted: LoraSet) -> None:
        if wanted == self.applied:
            return
        n = len(wanted)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))()
        scales = (ctypes.c_float * max(n, 1))()
        for k, (index, scale) in enumerate(wanted):
            handles[k] = self.adapters[index].handle
            scales[k] = scale
        if llama_cpp.llama_set_adapters_lora(ctx, handles, n, scales) != 0:
            raise InvalidRequest("llama.cpp refused the LoRA adapter set")
        self.applied = wanted
