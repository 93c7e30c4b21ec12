"""A tiny GGUF written whole and split in two (gguf-py's writer, one tensor per shard)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def _write(path: Path, name: str, fill: float, split: bool) -> None:
    writer = gguf.GGUFWriter(path, arch="llama", split_max_tensors=1 if split else 0)
    writer.add_name(name)
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_token_list(["<s>", "</s>", "a"])
    writer.add_tensor("token_embd.weight", np.full((3, 8), fill, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_split_gguf(root: Path, name: str, fill: float = 0.0) -> tuple[Path, list[Path]]:
    """(the whole file, its two shards `NAME-0000i-of-00002.gguf`) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    whole = root / f"{name}-whole.gguf"
    _write(whole, name, fill, split=False)
    _write(root / f"{name}.gguf", name, fill, split=True)
    shards = [root / f"{name}-{i:05d}-of-00002.gguf" for i in (1, 2)]
    assert all(p.exists() for p in shards)
    return whole, shards
