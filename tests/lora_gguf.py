"""LoRA adapter GGUFs for a base model, written from the base file's tensor shapes.

llama.cpp (`src/llama-adapter.cpp`) checks `general.type == "adapter"`, `adapter.type ==
"lora"`, that `general.architecture` is the base model's, and for each weight `W` (ggml
shape [n_in, n_out]) a pair `W.lora_a` [n_in, r] and `W.lora_b` [r, n_out]. Random A and a
B of `b_std` (0: an adapter whose product is exactly zero) make an adapter that changes
the model's answers, or provably does not.

    python tests/lora_gguf.py BASE.gguf OUT.gguf [--b-std 0.05]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

# The projections an adapter targets in every block (attention and feed-forward).
TARGETS = ("attn_q", "attn_v", "ffn_up")


def write_lora(
    base: Path,
    dest: Path,
    b_std: float = 0.05,
    rank: int = 4,
    alpha: float = 4.0,
    arch: str | None = None,
    seed: int = 0,
) -> Path:
    """An adapter for `base` (or one that claims architecture `arch`) at `dest`."""
    reader = gguf.GGUFReader(base)
    field = reader.fields["general.architecture"]
    base_arch = bytes(field.parts[field.data[0]]).decode()
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(dest, arch=arch or base_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for tensor in reader.tensors:
        name = tensor.name.removesuffix(".weight")
        if not tensor.name.endswith(".weight") or name.rpartition(".")[2] not in TARGETS:
            continue
        n_in, n_out = (int(x) for x in tensor.shape[:2])
        a = rng.normal(0.0, 1.0 / np.sqrt(n_in), (rank, n_in)).astype(np.float32)
        b = rng.normal(0.0, b_std, (n_out, rank)) if b_std else np.zeros((n_out, rank))
        writer.add_tensor(f"{tensor.name}.lora_a", a)
        writer.add_tensor(f"{tensor.name}.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--b-std", type=float, default=0.05)
    args = parser.parse_args(argv)
    write_lora(args.base, args.out, args.b_std)
    return 0


if __name__ == "__main__":
    sys.exit(main())
