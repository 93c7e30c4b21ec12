"""GGUF header metadata (architecture, size, quantization, shapes) without reading tensor data.

`gguf.GGUFReader` memory-maps the file, so only the header pages are actually read. We check
the magic ourselves first so that a random file gets a clear `InvalidModelFile` instead of
whatever numpy/gguf raise, and we map every parser failure (truncation, garbage) to it too.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gguf
from pydantic import BaseModel, ConfigDict, computed_field

from .errors import InvalidModelFile

GGUF_MAGIC = b"GGUF"


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
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tensor_count: int = 0
    gguf_version: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)


def check_magic(path: str | Path) -> None:
    """Raise `InvalidModelFile` unless `path` is a regular file starting with `GGUF`."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelFile(f"{path}: no such file")
    if not path.is_file():
        raise InvalidModelFile(f"{path}: not a regular file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InvalidModelFile(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if magic != GGUF_MAGIC:
        raise InvalidModelFile(f"{path}: not a GGUF model file (bad magic {magic!r})")


def read_metadata(path: str | Path) -> GGUFMetadata:
    """Parse the GGUF header of `path`; raises `InvalidModelFile` for anything unreadable."""
    path = Path(path)
    check_magic(path)
    try:
        reader = gguf.GGUFReader(path, "r")
        return _extract(reader, path.stat().st_size)
    except InvalidModelFile:
        raise
    except Exception as exc:  # the parser raises ValueError/IndexError/KeyError/... on garbage
        raise InvalidModelFile(f"{path}: corrupt or truncated GGUF ({exc})") from exc


def _scalar(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    if field is None or not field.types:
        return None
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return None  # only per-layer numeric arrays are meaningful here
        values = field.contents()
        return max(values) if values else None  # per-layer counts: the max bounds memory
    return field.contents()


def _int(reader: gguf.GGUFReader, key: str) -> int | None:
    value = _scalar(reader, key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(reader: gguf.GGUFReader, key: str) -> str | None:
    value = _scalar(reader, key)
    return value if isinstance(value, str) else None


def quantization_name(file_type: int | None, tensors: list[Any]) -> str:
    """`Q4_K_M` etc. from `general.file_type`, else the dominant type of the 2-D tensors."""
    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    weights: Counter[str] = Counter()
    for t in tensors:
        if len(t.shape) >= 2:
            weights[t.tensor_type.name] += int(t.n_elements)
    return weights.most_common(1)[0][0] if weights else "unknown"


def _extract(reader: gguf.GGUFReader, file_size: int) -> GGUFMetadata:
    tensors = reader.tensors
    # GGUFReader builds views lazily against the memmap, so a file cut inside the tensor data
    # can still parse; compare where the last tensor ends with the real size.
    data_end = max((int(t.data_offset) + int(t.n_bytes) for t in tensors), default=0)
    if data_end > file_size:
        raise InvalidModelFile(
            f"truncated GGUF: tensor data needs {data_end} bytes, file has {file_size}"
        )
    arch = _str(reader, "general.architecture")
    if not arch:
        raise InvalidModelFile("GGUF file has no general.architecture")

    def a(key: str) -> int | None:
        return _int(reader, f"{arch}.{key}")

    params = _int(reader, "general.parameter_count") or sum(int(t.n_elements) for t in tensors)
    file_type = _int(reader, "general.file_type")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    vocab = a("vocab_size") or (len(tokens.data) if tokens is not None else None)
    return GGUFMetadata(
        architecture=arch,
        name=_str(reader, "general.name"),
        parameter_count=params,
        quantization=quantization_name(file_type, tensors),
        file_type=file_type,
        context_length=a("context_length"),
        chat_template=_str(reader, "tokenizer.chat_template"),
        block_count=a("block_count"),
        embedding_length=a("embedding_length"),
        feed_forward_length=a("feed_forward_length"),
        head_count=a("attention.head_count"),
        head_count_kv=a("attention.head_count_kv"),
        key_length=a("attention.key_length"),
        value_length=a("attention.value_length"),
        sliding_window=a("attention.sliding_window"),
        vocab_size=vocab,
        bos_token_id=_int(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_int(reader, "tokenizer.ggml.eos_token_id"),
        tensor_count=len(tensors),
        gguf_version=_int(reader, "GGUF.version"),
    )


def format_params(count: int) -> str:
    """Human parameter count: 268M, 1.2B, 70B."""
    for unit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= unit:
            value = count / unit
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + suffix
    return str(count)
