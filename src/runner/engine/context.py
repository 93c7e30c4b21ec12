"""One llama.cpp context: the KV cache the slots share, batched decode, sequence state I/O."""

from __future__ import annotations

import contextlib
import ctypes
import os

import gguf
import llama_cpp
import numpy as np

from .checkpoints import Checkpoints
from .model import LlamaModel, ModelLoadError

# llama.cpp's state flag for "only the part that cannot be trimmed" (the recurrent state).
_PARTIAL = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY


class DecodeError(RuntimeError):
    pass


def ggml_type(cache_type: str) -> int:
    """llama.cpp's `ggml_type` of a KV cache type name (`f16`, `q8_0`, `iq4_nl`...)."""
    return int(gguf.GGMLQuantizationType[cache_type.upper()])


def is_quantized(cache_type: str) -> bool:
    return cache_type not in ("f32", "f16", "bf16")


class Batch:
    """A `llama_batch` whose arrays are numpy buffers, so filling it costs slice copies,
    not a Python loop per token. Each token belongs to exactly one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        # seq_id is `llama_seq_id **`: point entry i at seq_id[i] once, then write through numpy.
        base = self.seq_id.ctypes.data
        self._seq_ptrs = np.array([base + 4 * i for i in range(capacity)], dtype=np.uintp)
        self.struct = llama_cpp.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos))
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = ctypes.cast(
            self._seq_ptrs.ctypes.data, ctypes.POINTER(ctypes.POINTER(llama_cpp.llama_seq_id))
        )
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct._owner = self  # what a decode of the struct may read back (checkpoints)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def add_one(self, token: int, pos: int, seq: int) -> int:
        """Append one token that wants logits (a generating slot's step): scalar writes,
        no temporary arrays, since this runs for every stream on every step."""
        i = self.n
        self.token[i] = token
        self.pos[i] = pos
        self.seq_id[i] = seq
        self.logits[i] = 1
        self.n = i + 1
        return i

    def add(self, tokens: list[int], start_pos: int, seq: int, want_last_logits: bool) -> int:
        """Append tokens of one sequence at positions start_pos...; returns the index of the
        last one (where its logits will be, if asked for)."""
        k = len(tokens)
        a, b = self.n, self.n + k
        self.token[a:b] = tokens
        self.pos[a:b] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.seq_id[a:b] = seq
        self.logits[a:b] = 0
        if want_last_logits:
            self.logits[b - 1] = 1
        self.n = b
        return b - 1


class LlamaContext:
    """The shared context. Owned by exactly one thread (the engine's)."""

    def __init__(
        self,
        model: LlamaModel,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        n_ubatch: int,
        threads: int | None,
        kv_unified: bool,
        swa_full: bool,
        embeddings: bool = False,
        pooling: int = llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        cache_type_k: str = "f16",
        cache_type_v: str = "f16",
        checkpoint_block: int = 0,
        checkpoint_limit: int = 8,
    ) -> None:
        self.model = model
        # With a recurrent state: snapshot it after prompt pieces that end on a multiple of
        # `checkpoint_block`, so `truncate` can go back there (engine/checkpoints.py).
        self.checkpoint_block = checkpoint_block if not model.trimmable else 0
        self.checkpoints = Checkpoints(max(checkpoint_limit, 1))
        # The last state read out of a sequence: when it is written into another one (a
        # prefix copied between slots), that sequence's checkpoints go along.
        self._exported: tuple[int, bytes] | None = None
        params = llama_cpp.llama_context_default_params()
        params.type_k = ggml_type(cache_type_k)
        params.type_v = ggml_type(cache_type_v)
        if is_quantized(cache_type_v):
            # llama.cpp reads a quantized V only inside its flash-attention kernel; say so
            # rather than leave it to "auto", which could resolve to off on some device.
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        params.n_seq_max = n_seq_max
        n_threads = threads or max(1, os.cpu_count() or 1)
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = kv_unified
        params.swa_full = swa_full
        params.no_perf = True
        if embeddings:
            params.embeddings = True
            params.pooling_type = pooling
        self._ctx = llama_cpp.llama_init_from_model(model.handle, params)
        if not self._ctx:
            types = ""
            if (cache_type_k, cache_type_v) != ("f16", "f16"):
                types = (
                    f" with a {cache_type_k}/{cache_type_v} K/V cache (quantized types need "
                    "head sizes that are multiples of their block, and flash attention for V)"
                )
            raise ModelLoadError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {model.path.name}"
                f"{types} (out of memory?)"
            )
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        # Sliding-window layers attend to this many positions back (0: none).
        self.n_swa = llama_cpp.llama_model_n_swa(model.handle)
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)
        self.mem = llama_cpp.llama_get_memory(self._ctx)

    @property
    def handle(self) -> llama_cpp.llama_context_p:
        return self._ctx

    def decode(self, batch: llama_cpp.llama_batch) -> int:
        status = llama_cpp.llama_decode(self._ctx, batch)
        owner = getattr(batch, "_owner", None)
        if status == 0 and self.checkpoint_block and isinstance(owner, Batch):
            self._checkpoint(owner)
        return status

    def _checkpoint(self, batch: Batch) -> None:
        """Snapshot the recurrent state of each sequence whose prompt piece in `batch` ended
        on a block boundary. A piece is several tokens of one sequence (a generated token
        comes alone and is never a cut the prompt partition makes)."""
        seqs, pos = batch.seq_id[: batch.n], batch.pos[: batch.n]
        for seq in np.unique(seqs).tolist():
            mine = pos[seqs == seq]
            end = int(mine.max()) + 1
            if len(mine) >= 2 and end % self.checkpoint_block == 0:
                self.checkpoints.add(seq, end, self._seq_state(seq, _PARTIAL))

    # -- KV cache per sequence ---------------------------------------------------------

    def pos_max(self, seq: int) -> int:
        return llama_cpp.llama_memory_seq_pos_max(self.mem, seq)

    def truncate(self, seq: int, keep: int) -> int:
        """Keep positions [0, keep) of `seq`; returns how many really survived.

        With a windowed SWA cache, llama.cpp may report success yet drop the whole sequence
        (engine-facts.md), so the result is checked rather than trusted. A state read back
        from elsewhere holds only the last window of its sliding-window layers (llama.cpp
        saves no masked cells), so it cannot be cut back to where that window is missing.
        """
        if keep <= 0:
            self.clear_seq(seq)
            return 0
        ok = llama_cpp.llama_memory_seq_rm(self.mem, seq, keep, -1)
        if ok and self.pos_max(seq) == keep - 1 and self._window_held(seq, keep):
            self.checkpoints.keep_up_to(seq, keep)
            return keep
        # A recurrent state refuses the cut (unchanged): go back to a snapshot instead.
        back = self._rollback(seq, keep) if not ok else 0
        if back:
            return back
        self.clear_seq(seq)
        return 0

    def _window_held(self, seq: int, keep: int) -> bool:
        """Whether the sliding-window layers hold the positions the token at `keep` sees."""
        if not self.n_swa:
            return True
        return llama_cpp.llama_memory_seq_pos_min(self.mem, seq) <= max(0, keep - self.n_swa)

    def _rollback(self, seq: int, keep: int) -> int:
        """Restore the newest checkpoint at or below `keep` and trim the attention KV (if
        any) to it; returns its position, or 0 when there is none or it failed."""
        snapshot = self.checkpoints.best(seq, keep)
        if snapshot is None:
            return 0
        at, state = snapshot
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not llama_cpp.llama_state_seq_set_data_ext(self._ctx, buf, len(state), seq, _PARTIAL):
            return 0
        ok = llama_cpp.llama_memory_seq_rm(self.mem, seq, at, -1)
        if not ok or self.pos_max(seq) != at - 1:
            return 0
        self.checkpoints.keep_up_to(seq, at)
        return at

    def clear_seq(self, seq: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.checkpoints.drop(seq)

    def clear_all(self) -> None:
        llama_cpp.llama_memory_clear(self.mem, True)
        self.checkpoints.drop()

    # -- sequence state (for the RAM/disk prompt cache) -------------------------------

    def seq_state(self, seq: int) -> bytes:
        data = self._seq_state(seq, 0)
        if self.checkpoint_block:
            self._exported = (seq, data)
        return data

    def _seq_state(self, seq: int, flags: int) -> bytes:
        size = llama_cpp.llama_state_seq_get_size_ext(self._ctx, seq, flags)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data_ext(self._ctx, buf, size, seq, flags)
        return bytes(memoryview(buf)[:written])

    def set_seq_state(self, seq: int, data: bytes) -> bool:
        self.clear_seq(seq)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        read = llama_cpp.llama_state_seq_set_data(self._ctx, buf, len(data), seq)
        exported, self._exported = self._exported, None
        if read == 0:
            llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)
            return False
        if exported is not None and exported[1] is data and exported[0] != seq:
            self.checkpoints.copy(exported[0], seq)
        return True

    def save_seq_file(self, seq: int, path: str, tokens: list[int]) -> int:
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        return llama_cpp.llama_state_seq_save_file(self._ctx, path.encode(), seq, arr, len(tokens))

    def load_seq_file(self, seq: int, path: str, capacity: int) -> list[int] | None:
        self.clear_seq(seq)
        arr = (llama_cpp.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        read = llama_cpp.llama_state_seq_load_file(
            self._ctx, path.encode(), seq, arr, capacity, ctypes.byref(count)
        )
        if read == 0:
            llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)
            return None
        return list(arr[: count.value])

    # -- embeddings ------------------------------------------------------------------

    def seq_embedding(self, seq: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
        if not ptr:
            raise DecodeError("no pooled embedding for sequence")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_embd,)).copy()

    def seq_scores(self, seq: int, n: int) -> np.ndarray:
        """A rank-pooled sequence's `n` classifier outputs (a reranker's scores)."""
        ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
        if not ptr:
            raise DecodeError("no pooled score for sequence")
        return np.ctypeslib.as_array(ptr, shape=(max(n, 1),)).copy()

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:  # pragma: no cover - safety net only
        with contextlib.suppress(Exception):
            self.close()
