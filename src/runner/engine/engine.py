"""`Engine`: one loaded model served by one engine thread. The only door into llama.cpp
for the rest of runner: submit a request, iterate its events, cancel it. The model, the
context and the scheduler stay private; callers read `info`, `slots()` and `stats`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..cache import PromptCache
from . import slot_files
from .activity import ActivityLog
from .context import LlamaContext
from .core import EngineCore
from .draft import DraftModel
from .executor import LlamaExecutor
from .infill import infill_tokens
from .job import (
    Completion,
    EmbedJob,
    Job,
    LoopSink,
    RequestHandle,
    ThreadSink,
    collect,
    thread_events,
)
from .lora import LoraAdapter, check_request_set, load_adapters, lora_set
from .model import LlamaModel
from .prompt_size import prompt_byte_bound
from .rerank import rank_tokens
from .stats import EngineStats
from .types import (
    EmbeddingsDone,
    EngineConfig,
    EngineInfo,
    FinishEvent,
    GenerationRequest,
    InvalidRequest,
    PromptTooLong,
)

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
        self._model = LlamaModel(model_path, config.gpu_layers)
        if not self._model.trimmable and (config.spec_draft_max or config.draft_model):
            # Rejected guesses are dropped by cutting the sequence back: a recurrent state
            # cannot be, so such a model decodes without speculation.
            log.info("%s: recurrent state, speculative decoding off", self.name)
            config = dataclasses.replace(config, spec_draft_max=0, draft_model=None)
            self.config = config
        ctx: LlamaContext | None = None
        try:
            self._adapters: list[LoraAdapter] = load_adapters(self._model, config.lora)
            # The scales a request naming no `lora` runs with (POST /lora-adapters sets them).
            self._lora_scales = [scale for _, scale in config.lora]
            ctx = LlamaContext(
                self._model,
                n_ctx=config.n_ctx,
                n_seq_max=config.slots,
                n_batch=config.n_batch,
                n_ubatch=config.n_ubatch,
                threads=config.threads,
                kv_unified=config.kv_unified,
                swa_full=config.swa_full,
                cache_type_k=config.cache_type_k,
                cache_type_v=config.cache_type_v,
                checkpoint_block=config.prefill_block if config.state_checkpoints else 0,
                checkpoint_limit=config.state_checkpoints,
            )
            self._draft = (
                DraftModel(config.draft_model, self._model, config) if config.draft_model else None
            )
        except Exception:
            if ctx is not None:
                ctx.close()
            self._model.close()
            raise
        self._ctx = ctx
        # Bytes past which a prompt cannot fit a slot, checked before tokenizing it.
        self.prompt_bytes_max = prompt_byte_bound(self._model, config.ctx_per_slot)
        self.load_seconds = time.perf_counter() - started
        self.prompt_cache = prompt_cache
        self.info = EngineInfo(
            name=self.name,
            n_vocab=self._model.n_vocab,
            n_embd=self._model.n_embd,
            gpu_layers=self._model.gpu_layers,
            slots=config.slots,
            ctx_per_slot=config.ctx_per_slot,
            load_seconds=self.load_seconds,
            draft_model=self._draft.name if self._draft else None,
        )
        self.stats = EngineStats()
        self._executor = LlamaExecutor(self._model, ctx, config, self.stats, self._adapters)
        activity = ActivityLog(self.name, config.log_interval, config.log_text, self.detokenize)
        self._core = EngineCore(
            config, self._executor, prompt_cache, self.stats, self._draft, activity
        )
        self._closed = False
        self._thread = threading.Thread(
            target=self._core.run, name=f"engine:{self.name}", daemon=True
        )
        self._thread.start()

    # -- tokens (vocabulary reads are thread-safe) ------------------------------------------

    def check_prompt_size(self, n_chars: int) -> None:
        """PromptTooLong for a prompt of `n_chars` characters (or more) that certainly has
        more tokens than a slot holds (prompt_size.py), decided without tokenizing it."""
        bound = self.prompt_bytes_max
        if bound is not None and n_chars > bound:
            raise PromptTooLong(
                f"the prompt has over {bound} bytes: more tokens than a slot holds "
                f"({self.config.ctx_per_slot}, prompt plus output); shorten it or raise "
                "--ctx-size"
            )

    def tokenize_prompt(self, text: str) -> list[int]:
        """`tokenize` a prompt (BOS added, special tokens parsed), refusing at once one that
        cannot fit a slot."""
        self.check_prompt_size(len(text))
        if self.prompt_bytes_max is not None and 4 * len(text) > self.prompt_bytes_max:
            self.check_prompt_size(len(text.encode("utf-8", "surrogatepass")))
        return self.tokenize(text, add_special=True, parse_special=True)

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self._model.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(list(tokens))

    def piece_bytes(self, token: int) -> bytes:
        """A token's text as raw bytes (part of a UTF-8 character, for some tokens)."""
        return self._model.piece(token)

    def token_piece(self, token: int, special: bool = False) -> str:
        return self._model.piece(token, special).decode("utf-8", "replace")

    # -- generation -----------------------------------------------------------------------

    def validate(self, request: GenerationRequest) -> None:
        """Raise PromptTooLong/InvalidRequest for a request the engine cannot run; fixes
        its LoRA set (the model's current scales when it names none)."""
        if request.lora is None:
            request.lora = lora_set(enumerate(self._lora_scales))
        else:
            request.lora = check_request_set(request.lora, len(self._adapters))
        prompt = request.prompt_tokens
        if not prompt:
            raise InvalidRequest("the prompt is empty")
        if len(prompt) >= self.config.ctx_per_slot:
            raise PromptTooLong(
                f"the prompt has {len(prompt)} tokens but a slot holds {self.config.ctx_per_slot}"
                " (prompt plus output); shorten it or raise --ctx-size"
            )
        n_vocab = self.info.n_vocab
        if min(prompt) < 0 or max(prompt) >= n_vocab:
            raise InvalidRequest(f"prompt token ids must be in [0, {n_vocab})")
        if request.id_slot >= self.config.slots:
            raise InvalidRequest(f"id_slot must be below {self.config.slots}")
        bad = [t for t in request.sampling.logit_bias if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequest(f"logit_bias token {bad[0]} is outside the vocabulary")
        grammar = request.sampling.grammar
        if grammar and len(grammar.encode("utf-8")) > self.config.max_grammar_bytes:
            raise InvalidRequest(
                f"the grammar is larger than {self.config.max_grammar_bytes} bytes "
                "(--max-grammar-bytes)"
            )

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; iterate the returned handle (on this event loop) for its events.

        Raises PromptTooLong/InvalidRequest at once, QueueFull when the wait queue is full,
        EngineDead when the engine thread has failed.
        """
        self.validate(request)
        sink = LoopSink(asyncio.get_running_loop())
        job = Job(request, sink)
        handle = RequestHandle(job, sink, self._core.cancel)
        self._core.submit(job)
        return handle

    def submit_choices(self, request: GenerationRequest, n: int) -> list[RequestHandle]:
        """Queue `n` choices of one request: the prompt is computed once and its state copied
        to the others' slots; each draws with its own sampler (`seeds`: seed + i when given)."""
        if n < 1 or n > self.config.slots:
            raise InvalidRequest(f"n must be between 1 and {self.config.slots} (the slots)")
        self.validate(request)
        loop = asyncio.get_running_loop()
        handles: list[RequestHandle] = []
        jobs: list[Job] = []
        for i in range(n):
            sampling = dataclasses.replace(request.sampling)
            if sampling.seed is not None and sampling.seed >= 0:
                sampling.seed = (sampling.seed + i) & 0xFFFFFFFF
            sink = LoopSink(loop)
            job = Job(dataclasses.replace(request, sampling=sampling), sink)
            jobs.append(job)
            handles.append(RequestHandle(job, sink, self._core.cancel))
        jobs[0].followers = jobs[1:]
        self._core.submit(jobs[0])
        return handles

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> Completion:
        """Blocking: run a request to the end (for scripts, tests and the CLI)."""
        self.validate(request)
        sink = ThreadSink()
        self._core.submit(Job(request, sink))
        return collect(thread_events(sink, timeout))

    # -- LoRA adapters (llama-server's /lora-adapters) ---------------------------------------

    def lora_adapters(self) -> list[dict[str, Any]]:
        """The loaded adapters with the scales requests that name none run with."""
        return [
            {"id": i, "path": a.path, "scale": self._lora_scales[i]}
            for i, a in enumerate(self._adapters)
        ]

    def set_lora_scales(self, requested: Sequence[tuple[int, float]]) -> None:
        """New scales for requests that name none: adapters not listed get 0, as in
        llama-server. Running requests keep theirs; prefixes of other sets stay cached
        for requests that ask for those sets."""
        chosen = dict(check_request_set(requested, len(self._adapters)))
        self._lora_scales = [chosen.get(i, 0.0) for i in range(len(self._adapters))]

    # -- embeddings -----------------------------------------------------------------------

    def _tokenize_inputs(self, inputs: Sequence[str | list[int]]) -> list[list[int]]:
        return [self.tokenize(x) if isinstance(x, str) else list(x) for x in inputs]

    @property
    def can_rank(self) -> bool:
        """Whether the model is a reranker (rank pooling: a score per query-document pair)."""
        return self._model.rank_pooling

    def infill_tokens(
        self,
        prefix: str,
        suffix: str,
        extra: Sequence[tuple[str, str]] = (),
        prompt: str = "",
        n_predict: int = -1,
    ) -> list[int]:
        """llama-server's `/infill` prompt (`infill.infill_tokens`); InvalidRequest for a
        model without fill-in-the-middle tokens."""
        config = self.config
        return infill_tokens(
            self._model, prefix, suffix, extra, prompt, config.n_batch, config.ctx_per_slot,
            n_predict,
        )  # fmt: skip

    def rank_tokens(self, query: str, document: str) -> list[int]:
        """A query-document pair as the reranker reads it (`rerank.rank_tokens`)."""
        return rank_tokens(self._model, query, document)

    async def embed(self, inputs: Sequence[str | list[int]], rank: bool = False) -> EmbeddingsDone:
        """L2-normalized mean-pooled embeddings, computed between generation steps; with
        `rank`, each input's relevance score (a reranker's pairs, `rank_tokens`)."""
        if rank and not self.can_rank:
            raise InvalidRequest(f"{self.name} is not a reranker (its GGUF has no rank pooling)")
        if len(inputs) > 16 or sum(len(x) for x in inputs) > 16384:  # not on the event loop
            tokenized = await asyncio.to_thread(self._tokenize_inputs, inputs)
        else:
            tokenized = self._tokenize_inputs(inputs)
        total = 0
        for tokens in tokenized:
            if not tokens:
                raise InvalidRequest("an embedding input is empty")
            if len(tokens) > self.config.ctx_per_slot:
                raise PromptTooLong(
                    f"an embedding input has {len(tokens)} tokens; the limit is "
                    f"{self.config.ctx_per_slot}"
                )
            if min(tokens) < 0 or max(tokens) >= self.info.n_vocab:
                raise InvalidRequest("embedding token ids are outside the vocabulary")
            total += len(tokens)
        if total > self.config.max_embed_tokens:
            raise InvalidRequest(
                f"the inputs hold {total} tokens; one embeddings request may hold at most "
                f"{self.config.max_embed_tokens}"
            )
        sink = LoopSink(asyncio.get_running_loop())
        job = EmbedJob(tokenized, sink, rank=rank)
        self._core.submit(job)
        try:
            event = await sink.queue.get()
        except asyncio.CancelledError:
            self._core.cancel(job)
            raise
        if isinstance(event, FinishEvent):
            raise event.error or InvalidRequest("the embeddings request was cancelled")
        assert isinstance(event, EmbeddingsDone)
        return event

    # -- slot files (llama-server's POST /slots/{id}?action=...) ---------------------------

    async def slot_action(
        self, slot_id: int, action: str, path: str | None = None, model_sha256: str = ""
    ) -> dict:
        """`save` a slot's KV + tokens to `path`, `restore` it from there, or `erase` it.

        The slot must be idle; the caller validates `path` (it names a file the server owns).
        Saved files carry `model_sha256` and this engine's KV layout, and only a file that
        verifies against both (and its checksum) is restored (see slot_files.py).
        """
        if not 0 <= slot_id < self.config.slots:
            raise InvalidRequest(f"no slot {slot_id}; this model has {self.config.slots}")
        if action not in ("save", "restore", "erase"):
            raise InvalidRequest("action must be save, restore or erase")
        if action != "erase" and not path:
            raise InvalidRequest(f"action {action} needs a filename")
        key = slot_files.SlotFileKey(model_sha256, self.config.kv_key())
        file = None if path is None else Path(path)

        def on_engine(step: Callable[[Any], Any]) -> asyncio.Future[Any]:
            return asyncio.wrap_future(self.call_with_scheduler(step))

        return await slot_files.slot_action(on_engine, slot_id, action, file, key)

    # -- state ----------------------------------------------------------------------------

    @property
    def vocab(self) -> Any:
        """llama.cpp's vocabulary handle, for checking grammars (reads are thread-safe)."""
        return self._model.vocab

    def reusable_prefixes(self, timeout: float = 1.0) -> list[list[int]]:
        """The token prefixes the slots hold that a new prompt could reuse (for routers);
        empty if the engine does not answer within `timeout`."""

        def collect_prefixes() -> list[list[int]]:
            slots = self._core.scheduler.slots
            return [list(s.tokens[: s.exact.length]) for s in slots if s.exact.length]

        try:
            return self._core.call(collect_prefixes).result(timeout)
        except Exception:
            return []

    def call_with_scheduler(self, fn: Callable[[Any], Any]) -> Future[Any]:
        """Runs `fn(scheduler)` on the engine thread (slot files; tests tuning speculation).
        The scheduler is lent to `fn` there and never handed out, so nothing else touches it
        from another thread."""
        return self._core.call(lambda: fn(self._core.scheduler))

    def slots(self) -> list[dict[str, Any]]:
        """The slots as the engine thread last saw them (a snapshot, never torn)."""
        return self._core.snapshot

    @property
    def processing(self) -> int:
        return self._core.n_busy

    @property
    def queued(self) -> int:
        return self._core.n_waiting

    @property
    def busy(self) -> bool:
        """Serving or holding queued requests (an engine in this state is never unloaded)."""
        return self._core.busy

    @property
    def dead(self) -> str | None:
        """Why the engine thread stopped on an error, or None while it is healthy."""
        return self._core.dead

    def close(self, drain: bool = False, timeout: float | None = None) -> None:
        """Stop the engine thread and free llama.cpp memory. With `drain`, running and
        queued requests finish first (up to `timeout`); the rest fail with EngineClosed."""
        if self._closed:
            return
        self._core.stop(drain)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._core.stop(drain=False)
            self._thread.join()
        self._closed = True
        self._executor.close()
        if self._draft is not None:
            self._draft.close()
        self._ctx.close()
        self._model.close()
