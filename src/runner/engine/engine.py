"""`Engine`: one loaded model served by one engine thread. The only door into llama.cpp
for the rest of runner: submit a request, iterate its events, cancel it."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import PromptCache
from . import slot_files
from .context import Batch, DecodeError, LlamaContext
from .job import Completion, Job, RequestHandle, SyncHandle, collect
from .model import LlamaModel
from .scheduler import Scheduler
from .types import EngineConfig, GenerationRequest, InvalidRequest, PromptTooLong

log = logging.getLogger(__name__)


class Engine:
    """Loads `model_path` with `config` and starts the engine thread."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        config: EngineConfig,
        name: str = "",
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.name = name or os.path.basename(os.fspath(model_path))
        self.config = config
        started = time.perf_counter()
        self.model = LlamaModel(model_path, config.gpu_layers)
        try:
            self.ctx = LlamaContext(
                self.model,
                n_ctx=config.n_ctx,
                n_seq_max=config.slots,
                n_batch=config.n_batch,
                n_ubatch=config.n_ubatch,
                threads=config.threads,
                kv_unified=config.kv_unified,
                swa_full=config.swa_full,
            )
        except Exception:
            self.model.close()
            raise
        self.load_seconds = time.perf_counter() - started
        self.prompt_cache = prompt_cache
        self.scheduler = Scheduler(self.model, self.ctx, config, prompt_cache)
        self._embed_ctx: LlamaContext | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self.scheduler.run, name=f"engine:{self.name}", daemon=True
        )
        self._thread.start()

    # -- tokens (vocabulary reads are thread-safe) ------------------------------------------

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self.model.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.model.detokenize(list(tokens))

    def token_piece(self, token: int, special: bool = False) -> str:
        return self.model.piece(token, special).decode("utf-8", "replace")

    # -- generation -----------------------------------------------------------------------

    def validate(self, request: GenerationRequest) -> None:
        prompt = request.prompt_tokens
        if not prompt:
            raise InvalidRequest("the prompt is empty")
        if len(prompt) >= self.config.ctx_per_slot:
            raise PromptTooLong(
                f"the prompt has {len(prompt)} tokens but a slot holds {self.config.ctx_per_slot}"
                " (prompt plus output); shorten it or raise --ctx-size"
            )
        n_vocab = self.model.n_vocab
        if min(prompt) < 0 or max(prompt) >= n_vocab:
            raise InvalidRequest(f"prompt token ids must be in [0, {n_vocab})")
        if request.id_slot >= len(self.scheduler.slots):
            raise InvalidRequest(f"id_slot must be below {len(self.scheduler.slots)}")
        bad = [t for t in request.sampling.logit_bias if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequest(f"logit_bias token {bad[0]} is outside the vocabulary")
        n_ctx = self.config.ctx_per_slot
        # The penalty window: -1 means the whole context, and nothing beyond it exists.
        # llama.cpp allocates the window up front, so an unchecked value is a memory bomb.
        last_n = request.sampling.repeat_last_n
        request.sampling.repeat_last_n = n_ctx if last_n < 0 else min(last_n, n_ctx)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; iterate the returned handle (on this event loop) for its events.

        Raises PromptTooLong/InvalidRequest at once, QueueFull when the wait queue is full.
        """
        self.validate(request)
        handle = RequestHandle()
        job = Job(request, channel=(asyncio.get_running_loop(), handle.queue))
        handle.job = job
        handle.on_cancel = self.scheduler.cancel
        self.scheduler.enqueue(job)
        return handle

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> Completion:
        """Blocking: run a request to the end (for scripts, tests and the CLI)."""
        self.validate(request)
        handle = SyncHandle()
        self.scheduler.enqueue(Job(request, handle.sink))
        return collect(handle.events(timeout))

    # -- embeddings -----------------------------------------------------------------------

    async def embed(self, inputs: Sequence[str | list[int]]) -> list[tuple[list[float], int]]:
        """L2-normalized mean-pooled embeddings with each input's token count."""
        tokenized = [self.tokenize(x) if isinstance(x, str) else list(x) for x in inputs]
        for tokens in tokenized:
            if not tokens:
                raise InvalidRequest("an embedding input is empty")
            if len(tokens) > self.config.ctx_per_slot:
                raise PromptTooLong(
                    f"an embedding input has {len(tokens)} tokens; the limit is "
                    f"{self.config.ctx_per_slot}"
                )
            if min(tokens) < 0 or max(tokens) >= self.model.n_vocab:
                raise InvalidRequest("embedding token ids are outside the vocabulary")
        future = self.scheduler.call(lambda: [self._embed_one(t) for t in tokenized])
        return await asyncio.wrap_future(future)

    def _embed_one(self, tokens: list[int]) -> tuple[list[float], int]:
        if self._embed_ctx is None:
            n = self.config.ctx_per_slot
            self._embed_ctx = LlamaContext(
                self.model,
                n,
                1,
                n,
                n,
                self.config.threads,
                kv_unified=True,
                swa_full=False,
                embeddings=True,
            )
            self._embed_batch = Batch(n)
        ctx, batch = self._embed_ctx, self._embed_batch
        ctx.clear_all()
        batch.clear()
        batch.add(tokens, 0, 0, True)
        batch.logits[: batch.n] = 1
        batch.struct.n_tokens = batch.n
        if ctx.decode(batch.struct) != 0:
            raise DecodeError("embedding decode failed")
        vector = ctx.seq_embedding(0)
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
        return vector.astype(float).tolist(), len(tokens)

    # -- slot files (llama-server's POST /slots/{id}?action=...) ---------------------------

    async def slot_action(
        self, slot_id: int, action: str, path: str | None = None, model_sha256: str = ""
    ) -> dict:
        """`save` a slot's KV + tokens to `path`, `restore` it from there, or `erase` it.

        The slot must be idle; the caller validates `path` (it names a file the server owns).
        Saved files carry `model_sha256` and this engine's KV layout, and only a file that
        verifies against both (and its checksum) is restored (see slot_files.py).
        """
        if not 0 <= slot_id < len(self.scheduler.slots):
            raise InvalidRequest(f"no slot {slot_id}; this model has {len(self.scheduler.slots)}")
        if action not in ("save", "restore", "erase"):
            raise InvalidRequest("action must be save, restore or erase")
        if action != "erase" and not path:
            raise InvalidRequest(f"action {action} needs a filename")
        key = slot_files.SlotFileKey(model_sha256, self.config.kv_key())
        file = None if path is None else Path(path)
        return await slot_files.slot_action(self, slot_id, action, file, key)

    # -- state ----------------------------------------------------------------------------

    def run_on_engine(self, fn: Any) -> Future[Any]:
        return self.scheduler.call(fn)

    def slots(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in self.scheduler.slots]

    @property
    def busy(self) -> bool:
        """Serving or holding queued requests (an engine in this state is never unloaded)."""
        return self.scheduler.processing > 0 or self.scheduler.queued > 0

    @property
    def stats(self):  # noqa: ANN201 - EngineStats
        return self.scheduler.stats

    def close(self, drain: bool = False, timeout: float | None = None) -> None:
        """Stop the engine thread and free llama.cpp memory. With `drain`, running and
        queued requests finish first (up to `timeout`); the rest fail with EngineClosed."""
        if self._closed:
            return
        self.scheduler.stop(drain)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.scheduler.stop(drain=False)
            self._thread.join()
        self._closed = True
        if self._embed_ctx is not None:
            self._embed_ctx.close()
        self.ctx.close()
        self.model.close()
