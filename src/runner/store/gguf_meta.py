"""Model metadata for the store (architecture, size, quantization, shapes) from a GGUF header."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gguf
from pydantic import BaseModel, ConfigDict, computed_field

from .errors import InvalidModelFile
from .gguf_header import GGUFArray, TensorInfo, read_header


class GGUFMetadata(BaseModel):
    """What the store records about a model file; the shape fields feed memory estimates."""

    model_config = ConfigDict(frozen=True)

    architecture: str
    name: str | None = None
    parameter_count: int
    quantization: str
    file_type: int | None = None
    context_length: int | None = None
    chat_template: str | None = None
    block_count: int | None = None
    embedding_length: int | None = None
    feed_forward_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    sliding_window: int | None = None
    vocab_size: int | None = None
    # Layers with attention KV when only some have it (hybrid models); None: all of them.
    attention_layers: int | None = None
    # Bytes of recurrent state (Mamba/RWKV/short-convolution layers) per sequence, in f32.
    recurrent_state_bytes: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tensor_count: int = 0
    gguf_version: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)


def _int(fields: dict[str, Any], key: str) -> int | None:
    value = fields.get(key)
    if isinstance(value, GGUFArray):  # per-layer values: the max bounds memory use
        nums = [v for v in value.values or [] if isinstance(v, int | float)]
        value = max(nums) if nums else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _attention_layers(fields: dict[str, Any], arch: str) -> int | None:
    """Layers with KV heads, when `head_count_kv` is per layer (hybrids give 0 elsewhere)."""
    value = fields.get(f"{arch}.attention.head_count_kv")
    if isinstance(value, GGUFArray) and value.values is not None:
        return sum(1 for v in value.values if v)
    return None


def _recurrent_state(fields: dict[str, Any], arch: str, layers: int, attention: int) -> int | None:
    """f32 bytes of one sequence's recurrent state: SSM (conv + scan state), LFM2's short
    convolution or RWKV's WKV state, on every layer without attention."""
    n = layers - attention
    embd = _int(fields, f"{arch}.embedding_length") or 0
    inner = _int(fields, f"{arch}.ssm.inner_size")
    if inner and n > 0:
        d_conv = _int(fields, f"{arch}.ssm.conv_kernel") or 4
        d_state = _int(fields, f"{arch}.ssm.state_size") or 16
        groups = _int(fields, f"{arch}.ssm.group_count") or 0
        conv = (d_conv - 1) * (inner + 2 * groups * d_state)
        return 4 * n * (conv + d_state * inner)
    l_cache = _int(fields, f"{arch}.shortconv.l_cache")
    if l_cache and n > 0:
        return 4 * n * (l_cache - 1) * embd
    head = _int(fields, f"{arch}.wkv.head_size")
    if head and n > 0:
        return 4 * n * (embd * head + 2 * embd)
    return None


def _str(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def quantization_name(file_type: int | None, tensors: list[TensorInfo]) -> str:
    """`Q4_K_M` etc. from `general.file_type`, else the dominant type of the 2-D tensors."""
    if file_type is not None:
        try:
            return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    weights: Counter[str] = Counter()
    for t in tensors:
        if len(t.shape) >= 2:
            weights[t.type_name] += t.n_elements
    return weights.most_common(1)[0][0] if weights else "unknown"


def read_metadata(path: str | Path) -> GGUFMetadata:
    """Parse the GGUF header of `path`; raises `InvalidModelFile` for anything unreadable."""
    header = read_header(path)
    f, tensors = header.fields, header.tensors
    arch = _str(f, "general.architecture")
    if not arch:
        raise InvalidModelFile(f"{path}: GGUF file has no general.architecture")
    tokens = f.get("tokenizer.ggml.tokens")
    file_type = _int(f, "general.file_type")
    layers = _int(f, f"{arch}.block_count") or 0
    attention = _attention_layers(f, arch)
    if attention is None and not _int(f, f"{arch}.attention.head_count"):
        attention = 0  # no attention heads at all: a purely recurrent model
    return GGUFMetadata(
        architecture=arch,
        name=_str(f, "general.name"),
        parameter_count=_int(f, "general.parameter_count") or sum(t.n_elements for t in tensors),
        quantization=quantization_name(file_type, tensors),
        file_type=file_type,
        context_length=_int(f, f"{arch}.context_length"),
        chat_template=_str(f, "tokenizer.chat_template"),
        block_count=_int(f, f"{arch}.block_count"),
        embedding_length=_int(f, f"{arch}.embedding_length"),
        feed_forward_length=_int(f, f"{arch}.feed_forward_length"),
        head_count=_int(f, f"{arch}.attention.head_count"),
        head_count_kv=_int(f, f"{arch}.attention.head_count_kv"),
        key_length=_int(f, f"{arch}.attention.key_length"),
        value_length=_int(f, f"{arch}.attention.value_length"),
        sliding_window=_int(f, f"{arch}.attention.sliding_window"),
        vocab_size=_int(f, f"{arch}.vocab_size")
        or (tokens.length if isinstance(tokens, GGUFArray) else None),
        attention_layers=attention,
        recurrent_state_bytes=_recurrent_state(f, arch, layers, attention or 0),
        bos_token_id=_int(f, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_int(f, "tokenizer.ggml.eos_token_id"),
        tensor_count=len(tensors),
        gguf_version=header.version,
    )


def format_params(count: int) -> str:
    """Human parameter count: 268M, 1.2B, 70B."""
    for unit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= unit:
            value = count / unit
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + suffix
    return str(count)
