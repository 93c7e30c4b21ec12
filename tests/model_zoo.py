"""Tiny random-weight GGUFs of several llama.cpp architectures, written in seconds.

Cache exactness needs the real architecture and file format, not a good model: each file
has the tensor names, shapes and hyper-parameters llama.cpp's `src/models/<arch>.cpp` asks
for (checked against llama-cpp-python 0.3.36's vendored sources), random weights, and the
bundled Gemma's tokenizer block, so prompts tokenize like real text. About 15 MB each,
mostly the 262,144-token vocabulary (embeddings in Q4_0, the rest F32; gpt-oss 26 MB
with its untied output matrix).

    python tests/model_zoo.py OUT_DIR [--bundled GEMMA.gguf] [--only dense,moe]

Kinds (what the prompt cache has to deal with):

- `dense`: llama, full attention with grouped KV heads (2 query heads, 1 KV head);
- `moe`: qwen3moe, 4 experts with 2 used per token, Q/K norms;
- `hybrid`: lfm2, short-convolution (recurrent) layers between attention layers;
- `recurrent`: mamba2, no attention at all, a fixed-size state per sequence;
- `swa`: gpt-oss, sliding-window (128 tokens) and full attention layers in turn, attention
  sinks, biased MoE (F32 experts rather than MXFP4: the cache sees only the KV).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from runner.store.gguf_header import SCALAR_CODES

N_EMBD = 64
N_FF = 128
HEAD_DIM = 64
N_CTX_TRAIN = 4096
EPS = 1e-5
# Small embeddings and large layer weights: the layers, not the tied embedding of the last
# token, decide the next token, so answers depend on the whole prompt and do not repeat.
EMBD_STD = 0.02
WEIGHT_STD = 0.3

TokenizerKV = list[tuple[str, Any, GGUFValueType, GGUFValueType | None]]


@dataclass(frozen=True)
class ZooModel:
    """One tiny model: its kind, llama.cpp architecture, whether its state can be cut
    back to an earlier position (attention KV can; a recurrent state cannot), and whether it
    has sliding-window layers (a state saved elsewhere holds only their last window)."""

    kind: str
    arch: str
    trimmable: bool
    windowed: bool = False


ZOO = {
    "dense": ZooModel("dense", "llama", True),
    "moe": ZooModel("moe", "qwen3moe", True),
    "hybrid": ZooModel("hybrid", "lfm2", False),
    "recurrent": ZooModel("recurrent", "mamba2", False),
    "swa": ZooModel("swa", "gpt-oss", True, windowed=True),
}


def tokenizer_block(gguf_path: Path) -> TokenizerKV:
    """Every `tokenizer.*` key of a little-endian GGUF (vocabulary, scores, token types,
    special ids), with its types. Parsed here because `gguf.GGUFReader` takes ~20 s over a
    262k-token vocabulary (it builds a numpy view per element)."""
    buf = gguf_path.read_bytes()
    pos = 24  # magic, version, tensor count, key/value count
    (n_kv,) = struct.unpack_from("<Q", buf, 16)

    def scalar(code: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + code, buf, pos)
        pos += struct.calcsize(code)
        return value

    def string() -> bytes:
        nonlocal pos
        size = scalar("Q")
        pos += size
        return buf[pos - size : pos]

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype in SCALAR_CODES:
            return scalar(SCALAR_CODES[vtype])
        if vtype == GGUFValueType.STRING:
            return string()
        itype, length = scalar("I"), scalar("Q")
        if itype in SCALAR_CODES:
            dtype = np.dtype("<" + SCALAR_CODES[itype].replace("?", "b1"))
            items = np.frombuffer(buf, dtype, length, pos)
            pos += items.nbytes
            return items.tolist()
        return [value(itype) for _ in range(length)]

    out: TokenizerKV = []
    for _ in range(n_kv):
        key = string().decode()
        vtype = GGUFValueType(scalar("I"))
        sub = GGUFValueType(struct.unpack_from("<I", buf, pos)[0]) if vtype == 9 else None
        item = value(vtype)
        if key.startswith("tokenizer.") and key != "tokenizer.chat_template":
            out.append((key, item, vtype, sub))
    return out


class _Writer:
    """A GGUFWriter with the conventions of this zoo: hparams under the arch prefix, F32
    tensors given in llama.cpp's dimension order (ne0 first), seeded random values."""

    def __init__(self, path: Path, arch: str, seed: int) -> None:
        self.arch = arch
        self.w = gguf.GGUFWriter(path, arch=arch)
        self.rng = np.random.default_rng(seed)

    def hp(self, key: str, value: Any) -> None:
        full = f"{self.arch}.{key}"
        if isinstance(value, bool):
            self.w.add_key_value(full, value, GGUFValueType.BOOL)
        elif isinstance(value, int):
            self.w.add_key_value(full, value, GGUFValueType.UINT32)
        elif isinstance(value, float):
            self.w.add_key_value(full, value, GGUFValueType.FLOAT32)
        else:  # a per-layer list of counts
            self.w.add_key_value(full, list(value), GGUFValueType.ARRAY, GGUFValueType.UINT32)

    def tensor(
        self, name: str, ne: Iterable[int], fill: float | None = None, std=WEIGHT_STD
    ) -> None:
        shape = tuple(reversed(list(ne)))  # numpy's slowest axis first
        if fill is not None:
            data = np.full(shape, fill, dtype=np.float32)
        else:
            data = (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        self.w.add_tensor(name, data)

    def embeddings(self, n_vocab: int) -> None:
        """Token embeddings, also the output matrix (tied): Q4_0 keeps the vocabulary small."""
        data = self.rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32) * EMBD_STD
        quantized = gguf.quants.quantize(data, GGMLQuantizationType.Q4_0)
        self.w.add_tensor("token_embd.weight", quantized, raw_dtype=GGMLQuantizationType.Q4_0)

    def output(self, n_vocab: int) -> None:
        """A separate output matrix, for architectures that do not tie it to the embeddings."""
        data = self.rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32) * EMBD_STD
        quantized = gguf.quants.quantize(data, GGMLQuantizationType.Q4_0)
        self.w.add_tensor("output.weight", quantized, raw_dtype=GGMLQuantizationType.Q4_0)

    def close(self, tokenizer: TokenizerKV, name: str) -> None:
        self.w.add_name(name)
        self.w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
        for key, value, vtype, sub in tokenizer:
            self.w.add_key_value(key, value, vtype, sub)
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()


def _common(w: _Writer, n_layer: int, n_vocab: int) -> None:
    w.hp("context_length", N_CTX_TRAIN)
    w.hp("embedding_length", N_EMBD)
    w.hp("block_count", n_layer)
    w.hp("vocab_size", n_vocab)
    w.hp("attention.layer_norm_rms_epsilon", EPS)
    w.embeddings(n_vocab)


def _attention(w: _Writer, i: int, n_head: int, n_head_kv: int, qk_norm: bool) -> None:
    w.tensor(f"blk.{i}.attn_q.weight", (N_EMBD, HEAD_DIM * n_head))
    w.tensor(f"blk.{i}.attn_k.weight", (N_EMBD, HEAD_DIM * n_head_kv))
    w.tensor(f"blk.{i}.attn_v.weight", (N_EMBD, HEAD_DIM * n_head_kv))
    w.tensor(f"blk.{i}.attn_output.weight", (HEAD_DIM * n_head, N_EMBD))
    if qk_norm:
        w.tensor(f"blk.{i}.attn_q_norm.weight", (HEAD_DIM,), fill=1.0)
        w.tensor(f"blk.{i}.attn_k_norm.weight", (HEAD_DIM,), fill=1.0)


def _ffn(w: _Writer, i: int) -> None:
    w.tensor(f"blk.{i}.ffn_norm.weight", (N_EMBD,), fill=1.0)
    w.tensor(f"blk.{i}.ffn_gate.weight", (N_EMBD, N_FF))
    w.tensor(f"blk.{i}.ffn_up.weight", (N_EMBD, N_FF))
    w.tensor(f"blk.{i}.ffn_down.weight", (N_FF, N_EMBD))


def _dense(w: _Writer, n_vocab: int) -> None:
    n_layer, n_head, n_head_kv = 2, 2, 1
    _common(w, n_layer, n_vocab)
    w.hp("feed_forward_length", N_FF)
    w.hp("attention.head_count", n_head)
    w.hp("attention.head_count_kv", n_head_kv)
    w.hp("attention.key_length", HEAD_DIM)
    w.hp("attention.value_length", HEAD_DIM)
    w.hp("rope.dimension_count", HEAD_DIM)
    w.tensor("output_norm.weight", (N_EMBD,), fill=1.0)
    for i in range(n_layer):
        w.tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), fill=1.0)
        _attention(w, i, n_head, n_head_kv, qk_norm=False)
        _ffn(w, i)


def _moe(w: _Writer, n_vocab: int) -> None:
    n_layer, n_head, n_head_kv, n_expert, n_ff_exp = 2, 2, 1, 4, 64
    _common(w, n_layer, n_vocab)
    w.hp("feed_forward_length", N_FF)
    w.hp("expert_feed_forward_length", n_ff_exp)
    w.hp("expert_count", n_expert)
    w.hp("expert_used_count", 2)
    w.hp("attention.head_count", n_head)
    w.hp("attention.head_count_kv", n_head_kv)
    w.hp("attention.key_length", HEAD_DIM)
    w.hp("attention.value_length", HEAD_DIM)
    w.tensor("output_norm.weight", (N_EMBD,), fill=1.0)
    for i in range(n_layer):
        w.tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), fill=1.0)
        _attention(w, i, n_head, n_head_kv, qk_norm=True)
        w.tensor(f"blk.{i}.ffn_norm.weight", (N_EMBD,), fill=1.0)
        w.tensor(f"blk.{i}.ffn_gate_inp.weight", (N_EMBD, n_expert))
        w.tensor(f"blk.{i}.ffn_gate_exps.weight", (N_EMBD, n_ff_exp, n_expert))
        w.tensor(f"blk.{i}.ffn_up_exps.weight", (N_EMBD, n_ff_exp, n_expert))
        w.tensor(f"blk.{i}.ffn_down_exps.weight", (n_ff_exp, N_EMBD, n_expert))


def _hybrid(w: _Writer, n_vocab: int) -> None:
    # LFM2: a layer with no KV heads is a short convolution (recurrent state of L-1 columns).
    kv_heads = [0, 1, 0, 1]
    l_cache = 3
    _common(w, len(kv_heads), n_vocab)
    w.hp("feed_forward_length", N_FF)
    w.hp("attention.head_count", 1)  # one head of N_EMBD on attention layers
    w.hp("attention.head_count_kv", kv_heads)
    w.hp("shortconv.l_cache", l_cache)
    w.tensor("token_embd_norm.weight", (N_EMBD,), fill=1.0)  # LFM2's output norm name
    for i, heads in enumerate(kv_heads):
        w.tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), fill=1.0)
        if heads:
            _attention(w, i, 1, 1, qk_norm=True)
        else:
            w.tensor(f"blk.{i}.shortconv.conv.weight", (l_cache, N_EMBD))
            w.tensor(f"blk.{i}.shortconv.in_proj.weight", (N_EMBD, 3 * N_EMBD))
            w.tensor(f"blk.{i}.shortconv.out_proj.weight", (N_EMBD, N_EMBD))
        _ffn(w, i)


def _recurrent(w: _Writer, n_vocab: int) -> None:
    n_layer, d_conv, d_inner, d_state, n_group, dt_rank = 2, 4, 2 * N_EMBD, 16, 1, 4
    conv_dim = d_inner + 2 * n_group * d_state
    _common(w, n_layer, n_vocab)
    w.hp("ssm.conv_kernel", d_conv)
    w.hp("ssm.inner_size", d_inner)
    w.hp("ssm.state_size", d_state)
    w.hp("ssm.time_step_rank", dt_rank)
    w.hp("ssm.group_count", n_group)
    w.tensor("output_norm.weight", (N_EMBD,), fill=1.0)
    for i in range(n_layer):
        w.tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), fill=1.0)
        w.tensor(f"blk.{i}.ssm_in.weight", (N_EMBD, d_inner + conv_dim + dt_rank))
        w.tensor(f"blk.{i}.ssm_conv1d.weight", (d_conv, conv_dim), std=0.5)
        w.tensor(f"blk.{i}.ssm_conv1d.bias", (conv_dim,), fill=0.0)
        w.tensor(f"blk.{i}.ssm_dt.bias", (dt_rank,), fill=-1.0)
        w.tensor(f"blk.{i}.ssm_a", (1, dt_rank), fill=-1.0)  # A < 0: the state decays
        w.tensor(f"blk.{i}.ssm_d", (1, dt_rank), fill=1.0)
        w.tensor(f"blk.{i}.ssm_norm.weight", (d_inner // n_group, n_group), fill=1.0)
        w.tensor(f"blk.{i}.ssm_out.weight", (d_inner, N_EMBD))


def _swa(w: _Writer, n_vocab: int) -> None:
    # gpt-oss: sliding-window and full attention layers in turn, attention sinks, biased
    # MoE (F32 experts here, MXFP4 in the real files: the cache does not see the difference).
    n_layer, n_head, n_head_kv, n_expert, n_ff_exp = 2, 2, 1, 4, 64
    _common(w, n_layer, n_vocab)
    w.hp("feed_forward_length", N_FF)
    w.hp("expert_feed_forward_length", n_ff_exp)
    w.hp("expert_count", n_expert)
    w.hp("expert_used_count", 2)
    w.hp("attention.head_count", n_head)
    w.hp("attention.head_count_kv", n_head_kv)
    w.hp("attention.key_length", HEAD_DIM)
    w.hp("attention.value_length", HEAD_DIM)
    w.hp("rope.dimension_count", HEAD_DIM)
    w.hp("attention.sliding_window", 128)  # shorter than the tests' prompts
    w.tensor("output_norm.weight", (N_EMBD,), fill=1.0)
    w.output(n_vocab)  # gpt-oss has no tied output
    for i in range(n_layer):
        w.tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), fill=1.0)
        w.tensor(f"blk.{i}.post_attention_norm.weight", (N_EMBD,), fill=1.0)
        _attention(w, i, n_head, n_head_kv, qk_norm=False)
        w.tensor(f"blk.{i}.attn_output.bias", (N_EMBD,), fill=0.0)
        w.tensor(f"blk.{i}.attn_sinks.weight", (n_head,), fill=0.5)
        w.tensor(f"blk.{i}.ffn_gate_inp.weight", (N_EMBD, n_expert))
        w.tensor(f"blk.{i}.ffn_gate_inp.bias", (n_expert,), fill=0.0)
        for part in ("gate", "up"):
            w.tensor(f"blk.{i}.ffn_{part}_exps.weight", (N_EMBD, n_ff_exp, n_expert))
            w.tensor(f"blk.{i}.ffn_{part}_exps.bias", (n_ff_exp, n_expert), fill=0.0)
        w.tensor(f"blk.{i}.ffn_down_exps.weight", (n_ff_exp, N_EMBD, n_expert))
        w.tensor(f"blk.{i}.ffn_down_exps.bias", (N_EMBD, n_expert), fill=0.0)


_BUILDERS: dict[str, Callable[[_Writer, int], None]] = {
    "dense": _dense,
    "moe": _moe,
    "hybrid": _hybrid,
    "recurrent": _recurrent,
    "swa": _swa,
}


def write_model(kind: str, dest: Path, tokenizer: TokenizerKV, seed: int = 0) -> Path:
    """Write the zoo's `kind` model to `dest` with the given tokenizer block."""
    spec = ZOO[kind]
    n_vocab = next(len(v) for k, v, *_ in tokenizer if k == "tokenizer.ggml.tokens")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    writer = _Writer(tmp, spec.arch, seed)
    _BUILDERS[kind](writer, n_vocab)
    writer.close(tokenizer, f"zoo-{kind}")
    tmp.replace(dest)
    return dest


def build_zoo(out_dir: Path, tokenizer_source: Path, kinds: Iterable[str] = ZOO) -> dict[str, Path]:
    """Write the chosen models into `out_dir` (reusing files already there); kind -> path."""
    tokenizer: TokenizerKV | None = None
    paths: dict[str, Path] = {}
    for kind in kinds:
        path = out_dir / f"zoo-{kind}.gguf"
        if not path.exists():
            tokenizer = tokenizer or tokenizer_block(tokenizer_source)
            write_model(kind, path, tokenizer)
        paths[kind] = path
    return paths


def zoo_store(root: Path, tokenizer_source: Path, kinds: Iterable[str] = ZOO) -> Path:
    """A private model store under `root` holding the zoo as `zoo/<kind>`; its directory."""
    from runner.store import ModelStore

    store = ModelStore(root / "models", bundled_default=False)
    for kind, path in build_zoo(root / "files", tokenizer_source, kinds).items():
        store.add(f"zoo/{kind}", path)
    return root / "models"


def _bundled_path() -> Path:
    from runner.config import Settings
    from runner.store import BUNDLED_TAGS, ModelStore

    return ModelStore(Settings().models_dir).get(BUNDLED_TAGS[0]).path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--bundled", type=Path, help="GGUF whose tokenizer to copy")
    parser.add_argument("--only", default=",".join(ZOO), help="comma list of kinds")
    args = parser.parse_args(argv)
    started = time.monotonic()
    kinds = [k for k in args.only.split(",") if k]
    unknown = sorted(set(kinds) - set(ZOO))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {sorted(ZOO)}")
    paths = build_zoo(args.out_dir, args.bundled or _bundled_path(), kinds)
    for kind, path in paths.items():
        print(f"{kind:10s} {ZOO[kind].arch:9s} {path}  {path.stat().st_size / 1e6:.1f} MB")
    print(f"{time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
