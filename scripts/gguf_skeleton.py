#!/usr/bin/env python3
"""A model's shape without its weights, to benchmark where the real file cannot travel.

The device check (scripts/gpu_check.sh) may carry only 64 MiB, less than the bundled 250 MB
model. Speed does not depend on weight values, so we carry the model's metadata (vocabulary,
hyper-parameters, chat template) and tensor shapes, ~3 MB gzipped, and rebuild a model of the
same architecture and quantization there with random weights:

    python scripts/gguf_skeleton.py extract [SRC.gguf] skeleton.json.gz   # default: bundled
    python scripts/gguf_skeleton.py expand skeleton.json.gz model.gguf [--keep-f16]

`expand` writes F16 matrices / F32 vectors (norms are ones, the rest N(0, 0.02)), then quantizes
with llama.cpp (`llama_model_quantize`) to the source's file type (Q4_K_M for the bundled
model). The text such a model writes is gibberish; its speed matches the real one's.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SKIP_KEYS = ("GGUF.", "general.architecture")


def _bundled_path() -> Path:
    from runner.config import Settings
    from runner.store import BUNDLED_TAGS, ModelStore

    return ModelStore(Settings().models_dir).get(BUNDLED_TAGS[0]).path


def extract(src: Path, dst: Path) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(src)
    kv = []
    for key, field in reader.fields.items():
        if key.startswith(SKIP_KEYS):
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[1]).name if vtype == GGUFValueType.ARRAY else None
        kv.append([key, vtype.name, sub, field.contents()])
    arch = reader.fields["general.architecture"].contents()
    tensors = [[t.name, [int(d) for d in t.shape]] for t in reader.tensors]
    data = {"source": src.name, "architecture": arch, "kv": kv, "tensors": tensors}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dst, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    print(f"{dst}: {len(kv)} keys, {len(tensors)} tensors, {dst.stat().st_size / 1e6:.1f} MB")


def _random_tensor(rng: np.random.Generator, shape: list[int], name: str) -> np.ndarray:
    dims = tuple(reversed(shape))  # GGUF lists ne0 first; numpy wants the slowest axis first
    if len(dims) == 1:
        value = 1.0 if name.endswith("norm.weight") else 0.0
        return np.full(dims, value, dtype=np.float32)
    out = np.empty(dims, dtype=np.float16)
    flat = out.reshape(-1)
    step = 1 << 24
    for i in range(0, flat.size, step):  # chunks: keep float32 temporaries small
        n = min(step, flat.size - i)
        flat[i : i + n] = rng.standard_normal(n, dtype=np.float32) * 0.02
    return out


def expand(skeleton: Path, dst: Path, keep_f16: bool = False, seed: int = 0) -> None:
    from gguf import GGUFValueType, GGUFWriter

    with gzip.open(skeleton, "rt", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    t0 = time.monotonic()
    f16 = dst.with_suffix(".f16.gguf")
    writer = GGUFWriter(f16, arch=data["architecture"])
    ftype = 1
    for key, vtype, sub, value in data["kv"]:
        if key == "general.file_type":
            ftype = int(value)
            value = 1  # LLAMA_FTYPE_MOSTLY_F16 for the intermediate file
        writer.add_key_value(key, value, GGUFValueType[vtype], GGUFValueType[sub] if sub else None)
    rng = np.random.default_rng(seed)
    for name, shape in data["tensors"]:
        writer.add_tensor(name, _random_tensor(rng, shape, name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{f16}: {f16.stat().st_size / 1e6:.0f} MB F16 in {time.monotonic() - t0:.1f}s")
    if keep_f16 or ftype in (0, 1):
        f16.replace(dst)
        return
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(dst).encode(), ctypes.byref(params))
    f16.unlink()
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")
    print(
        f"{dst}: {dst.stat().st_size / 1e6:.0f} MB, file type {ftype}, {time.monotonic() - t0:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract", help="GGUF -> skeleton (metadata + tensor shapes)")
    ex.add_argument("paths", nargs="+", metavar="[SRC] DST", help="source GGUF (default bundled)")
    ep = sub.add_parser("expand", help="skeleton -> GGUF with random weights")
    ep.add_argument("skeleton", type=Path)
    ep.add_argument("dst", type=Path)
    ep.add_argument("--keep-f16", action="store_true", help="skip quantizing")
    ep.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "extract":
        if len(args.paths) > 2:
            parser.error("extract takes [SRC] DST")
        src = Path(args.paths[0]) if len(args.paths) == 2 else _bundled_path()
        extract(src, Path(args.paths[-1]))
    else:
        expand(args.skeleton, args.dst, args.keep_f16, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
