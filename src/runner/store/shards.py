"""Split GGUF models (`model-00001-of-00003.gguf`, ...) joined into one GGUF for the store.

The store keeps one file per model, so the shards a registry or the Hub serves are merged
after each one's sha256 was checked: the first shard's metadata without the `split.*` keys,
then every shard's tensors in order (the same layout `llama-gguf-split --merge` produces).
The merged file's sha256 is not known before the download, so the store remembers which
shard set gave which model (`merged.json`), which keeps a second pull download-free.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import InvalidModelFile
from .fileio import CHUNK, atomic_write_json, read_json
from .store import ModelStore

_SPLIT_PREFIX = "split."


def shards_key(digests: Sequence[str]) -> str:
    """A stable key for an ordered set of shard digests."""
    return hashlib.sha256(json.dumps(list(digests)).encode()).hexdigest()


def _mapping_path(store: ModelStore) -> Path:
    return store.root / "merged.json"


def merged_model(store: ModelStore, key: str) -> str | None:
    """The model ID an earlier pull merged these shards into, if it is still in the store."""
    mapping = read_json(_mapping_path(store), {})
    model_id = mapping.get(key) if isinstance(mapping, dict) else None
    return model_id if isinstance(model_id, str) and store.has_model(model_id) else None


def remember_merged(store: ModelStore, key: str, model_id: str) -> None:
    with store.locked():
        mapping = read_json(_mapping_path(store), {})
        mapping = mapping if isinstance(mapping, dict) else {}
        mapping = {k: v for k, v in mapping.items() if isinstance(v, str) and store.has_model(v)}
        mapping[key] = model_id
        atomic_write_json(_mapping_path(store), mapping)


def merge(
    shards: Sequence[Path], dest: Path, progress: Callable[[int, int], None] | None = None
) -> str:
    """Write the shards' model as one GGUF at `dest`; returns its sha256 hex."""
    import gguf

    try:
        readers = [gguf.GGUFReader(path) for path in shards]
    except (ValueError, OSError) as exc:
        raise InvalidModelFile(f"a GGUF shard is unreadable: {exc}") from exc
    first = readers[0]
    arch_field = first.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise InvalidModelFile("the first GGUF shard has no general.architecture")
    writer = gguf.GGUFWriter(dest, arch=str(arch_field.contents()))
    alignment = first.fields.get(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    for field in first.fields.values():
        # The writer adds the architecture itself; GGUF.* are the reader's virtual fields.
        name = field.name
        if name == gguf.Keys.General.ARCHITECTURE or name.startswith(("GGUF.", _SPLIT_PREFIX)):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    tensors = [tensor for reader in readers for tensor in reader.tensors]
    for tensor in tensors:
        data = tensor.data
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
    total = sum(int(t.n_bytes) for t in tensors)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    done = 0
    for reader, tensor in ((r, t) for r in readers for t in r.tensors):
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
        done += int(tensor.n_bytes)
        if progress:
            progress(done, total)
    writer.close()
    digest = hashlib.sha256()
    with dest.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
