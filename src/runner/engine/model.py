"""A GGUF model's weights and vocabulary, loaded through llama.cpp's C API."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from pathlib import Path

import llama_cpp

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """llama.cpp refused the file (corrupt, truncated, unsupported architecture...)."""


@functools.cache
def init_backend() -> None:
    """llama.cpp's process-wide init; quiet its logs unless runner runs at debug level."""
    verbose = logging.getLogger("runner").isEnabledFor(logging.DEBUG)
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
    llama_cpp.llama_backend_init()


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def system_info() -> str:
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


class LlamaModel:
    """Weights + vocabulary. Safe to read from any thread once loaded; freed by `close`."""

    def __init__(
        self, path: str | os.PathLike[str], gpu_layers: int = -1, repack: bool = True
    ) -> None:
        init_backend()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        params = llama_cpp.llama_model_default_params()
        if gpu_layers < 0:
            gpu_layers = 10_000 if gpu_offload_supported() else 0
        params.n_gpu_layers = gpu_layers
        params.use_extra_bufts = repack
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise ModelLoadError(
                f"llama.cpp could not load {self.path.name}: the file is corrupt, truncated "
                "or of an unsupported architecture"
            )
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_layer = llama_cpp.llama_model_n_layer(self._model)
        self.gpu_layers = min(gpu_layers, self.n_layer + 1)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        # A recurrent state (Mamba, RWKV, the recurrent layers of LFM2, Jamba, Granite hybrid)
        # keeps no per-token history: it cannot be cut back to an earlier position.
        self.trimmable = not (
            llama_cpp.llama_model_is_recurrent(self._model)
            or llama_cpp.llama_model_is_hybrid(self._model)
        )
        # A reranker's head (rank pooling, llama.cpp's type 4) scores query-document pairs.
        self.n_cls_out = llama_cpp.llama_model_n_cls_out(self._model)
        self.rank_pooling = self.meta(f"{self.meta('general.architecture')}.pooling_type") == str(
            llama_cpp.LLAMA_POOLING_TYPE_RANK
        )
        self._piece_cache: dict[int, bytes] = {}
        self._special_piece_cache: dict[int, bytes] = {}

    @property
    def handle(self) -> llama_cpp.llama_model_p:
        if not self._model:
            raise RuntimeError("model is closed")
        return self._model

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text (None when absent or not a scalar)."""
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        data = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token as generated text; special tokens (BOS, turn markers)
        render empty unless `special` asks for their text (as /tokenize shows them)."""
        cache = self._special_piece_cache if special else self._piece_cache
        cached = cache.get(token)
        if cached is not None:
            return cached
        # A buffer per call: this runs on HTTP threads too (tokenize with pieces).
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        out = buf.raw[:n]
        cache[token] = out
        return out

    def detokenize(self, tokens: list[int], render_special: bool = False) -> str:
        valid = [t for t in tokens if 0 <= t < self.n_vocab]
        capacity = max(64, len(valid) * 16)
        buf = ctypes.create_string_buffer(capacity)
        arr = (llama_cpp.llama_token * len(valid))(*valid)
        n = llama_cpp.llama_detokenize(
            self.vocab, arr, len(valid), buf, capacity, False, render_special
        )
        if n < 0:
            capacity = -n
            buf = ctypes.create_string_buffer(capacity)
            n = llama_cpp.llama_detokenize(
                self.vocab, arr, len(valid), buf, capacity, False, render_special
            )
        return buf.raw[:n].decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # pragma: no cover - safety net only
        with contextlib.suppress(Exception):
            self.close()
