"""Two more tiny models in the zoo's conventions (tests/model_zoo.py): a reranker and a code
model with fill-in-the-middle tokens.

- `rerank`: qwen3 with `pooling_type` rank and a `cls.output` head over two labels (as
  llama.cpp converts Qwen3-Reranker: the score is the softmax of the first label);
- `fim`: the zoo's dense llama whose tokenizer names fill-in-the-middle tokens
  (`tokenizer.ggml.fim_pre/suf/mid_token_id`, existing tokens of the Gemma vocabulary).
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFValueType
from model_zoo import (
    HEAD_DIM,
    N_EMBD,
    N_FF,
    TokenizerKV,
    _attention,
    _common,
    _dense,
    _ffn,
    _Writer,
    tokenizer_block,
)

# llama.cpp's LLAMA_POOLING_TYPE_RANK.
POOLING_RANK = 4
# Gemma tokens that stand in for a code model's FIM markers (any existing ids will do).
FIM_TOKENS = {"fim_pre": 106, "fim_suf": 107, "fim_mid": 108}


def _reranker(w: _Writer, n_vocab: int) -> None:
    n_layer, n_head, n_head_kv = 2, 2, 1
    _common(w, n_layer, n_vocab)
    w.hp("feed_forward_length", N_FF)
    w.hp("attention.head_count", n_head)
    w.hp("attention.head_count_kv", n_head_kv)
    w.hp("attention.key_length", HEAD_DIM)
    w.hp("attention.value_length", HEAD_DIM)
    w.hp("rope.dimension_count", HEAD_DIM)
    w.hp("pooling_type", POOLING_RANK)
    w.w.add_key_value(
        "qwen3.classifier.output_labels", ["yes", "no"], GGUFValueType.ARRAY, GGUFValueType.STRING
    )
    w.tensor("output_norm.weight", (N_EMBD,), fill=1.0)
    w.tensor("cls.output.weight", (N_EMBD, 2))
    for i in range(n_layer):
        w.tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), fill=1.0)
        _attention(w, i, n_head, n_head_kv, qk_norm=True)
        _ffn(w, i)


def write_reranker(dest: Path, tokenizer: TokenizerKV, seed: int = 0) -> Path:
    writer = _Writer(dest, "qwen3", seed)
    _reranker(writer, _n_vocab(tokenizer))
    writer.close(tokenizer, "zoo-rerank")
    return dest


def write_fim(dest: Path, tokenizer: TokenizerKV, seed: int = 0) -> Path:
    writer = _Writer(dest, "llama", seed)
    _dense(writer, _n_vocab(tokenizer))
    for name, token in FIM_TOKENS.items():
        writer.w.add_key_value(f"tokenizer.ggml.{name}_token_id", token, GGUFValueType.UINT32)
    writer.close(tokenizer, "zoo-fim")
    return dest


def extra_store(root: Path, tokenizer_source: Path) -> Path:
    """A private store under `root` with `zoo/rerank` and `zoo/fim`; its directory."""
    from runner.store import ModelStore

    tokenizer = tokenizer_block(tokenizer_source)
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    store = ModelStore(root / "models", bundled_default=False)
    store.add("zoo/rerank", write_reranker(files / "zoo-rerank.gguf", tokenizer))
    store.add("zoo/fim", write_fim(files / "zoo-fim.gguf", tokenizer))
    return root / "models"


def _n_vocab(tokenizer: TokenizerKV) -> int:
    return next(len(v) for k, v, *_ in tokenizer if k == "tokenizer.ggml.tokens")
