"""The executor: runs a step plan on llama.cpp (one decode, then the samplers), and the KV
operations the prefix planner asks for. Owned by the engine thread."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import llama_cpp
import numpy as np

from .context import Batch, LlamaContext
from .grammar_guard import GrammarWork
from .lora import LoraAdapter, LoraSet, LoraSwitch
from .model import LlamaModel
from .plan import BatchEntry, DecodeFailed
from .sampling import Sampler
from .stats import EngineStats
from .types import EngineConfig, EngineError, SamplingParams, TokenLogprob

# The token a step returns for a job whose sampler failed; `take_failure` says why.
SAMPLE_FAILED = -1
# Wall seconds of embedding decodes one step may make (at least one input): every input is a
# decode of its own, so a step of hundreds of tiny inputs would hold every chat's next token.
EMBED_STEP_SECONDS = 0.02


class LlamaExecutor:
    def __init__(
        self,
        model: LlamaModel,
        ctx: LlamaContext,
        config: EngineConfig,
        stats: EngineStats,
        adapters: Sequence[LoraAdapter] = (),
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.config = config
        self.stats = stats
        self.batch = Batch(ctx.n_batch)
        self._samplers: dict[int, Sampler] = {}
        self._n_probs: dict[int, int] = {}
        self._logprobs: dict[int, TokenLogprob] = {}
        self._failures: dict[int, EngineError] = {}
        self._where: list[int] = []  # batch index of each entry of the last step
        self._exp: np.ndarray | None = None  # scratch row for log-softmax
        self._embed_ctx: LlamaContext | None = None
        self._rank_ctx: LlamaContext | None = None
        self._embed_batch: Batch | None = None
        self._lora = LoraSwitch(adapters)
        self._job_lora: dict[int, LoraSet] = {}
        self._last_group: set[int] | None = None  # entries of the last decode (split steps)

    # -- steps -------------------------------------------------------------------------------

    def execute(self, entries: Sequence[BatchEntry]) -> list[list[int]]:
        """One decode, or one per LoRA set when the entries' jobs use several (llama.cpp
        applies adapters to the whole context). The group of the set the model was loaded
        with goes last, so `sample_at` (n choices) finds its logits."""
        groups: dict[LoraSet, list[int]] = {}
        for k, e in enumerate(entries):
            groups.setdefault(self._job_lora.get(e.job_id, ()), []).append(k)
        if len(groups) == 1:
            self._last_group = None
            self._lora.apply(self.ctx.handle, next(iter(groups)))
            return self._decode_and_sample(entries)
        loaded = self.config.loaded_lora
        order = sorted(groups, key=lambda lora: lora == loaded)  # stable: loaded set last
        out: list[list[int]] = [[] for _ in entries]
        where = [0] * len(entries)
        for lora in order:
            members = groups[lora]
            self._lora.apply(self.ctx.handle, lora)
            part = self._decode_and_sample([entries[k] for k in members])
            for k, tokens, index in zip(members, part, self._where, strict=True):
                out[k], where[k] = tokens, index
        self._where = where
        self._last_group = set(groups[order[-1]])
        return out

    def bind_lora(self, job_id: int, lora: LoraSet) -> None:
        self._job_lora[job_id] = lora

    def _decode_and_sample(self, entries: Sequence[BatchEntry]) -> list[list[int]]:
        batch = self.batch
        batch.clear()
        where: list[int] = []  # batch index of each entry's first sampled position
        for e in entries:
            if len(e.tokens) == 1 and e.sample:
                where.append(batch.add_one(e.tokens[0], e.start, e.seq))
            else:
                last = batch.add(e.tokens, e.start, e.seq, e.sample)
                if e.draft:
                    batch.logits[last - e.draft : last + 1] = 1
                where.append(last - e.draft)
        batch.struct.n_tokens = batch.n
        self._where = where
        started = time.perf_counter()
        status = self.ctx.decode(batch.struct)
        self.stats.n_decode_total += 1
        self.stats.decode_seconds_total += time.perf_counter() - started
        if status != 0:
            raise DecodeFailed(f"llama_decode failed ({status})")
        started = time.perf_counter()
        handle = self.ctx.handle
        out: list[list[int]] = []
        for e, i in zip(entries, where, strict=True):
            if not e.sample:
                out.append([])
                continue
            sampler = self._samplers[e.job_id]
            try:
                tokens = [sampler.sample(handle, i)]
                # Verify guesses in order with the request's own sampler: a guess stays only
                # if the sampler drew it (for a fixed guess that is speculative sampling's rule).
                for j, guess in enumerate(e.tokens[len(e.tokens) - e.draft :], start=1):
                    if tokens[-1] != guess:
                        break
                    tokens.append(sampler.sample(handle, i + j))
            except EngineError as exc:  # this request only (its grammar ran over its budget...)
                self._failures[e.job_id] = exc
                out.append([SAMPLE_FAILED])
                continue
            out.append(tokens)
            n_top = self._n_probs.get(e.job_id)
            if n_top is not None:  # such requests are never given guesses (one token)
                self._logprobs[e.job_id] = self._logprob(i, tokens[-1], n_top)
        self.stats.sample_seconds_total += time.perf_counter() - started
        return out

    def time_rows(self, seq: int, sizes: Sequence[int], repeats: int = 2) -> dict[int, float]:
        """Seconds of a decode of n rows, each with logits, for each n (the fastest of
        `repeats`); runs on the empty sequence `seq` and leaves it empty."""
        out: dict[int, float] = {}
        token = self.model.bos if self.model.bos >= 0 else 0
        try:
            for n in sizes:
                if n > min(self.batch.capacity, self.config.ctx_per_slot - 1):
                    break
                best = float("inf")
                for _ in range(repeats):
                    self.ctx.clear_seq(seq)
                    batch = self.batch
                    batch.clear()
                    last = batch.add([token] * n, 0, seq, True)
                    batch.logits[: last + 1] = 1
                    batch.struct.n_tokens = batch.n
                    started = time.perf_counter()
                    if self.ctx.decode(batch.struct) != 0:
                        raise DecodeFailed("calibration decode failed")
                    best = min(best, time.perf_counter() - started)
                out[n] = best
        finally:
            self.ctx.clear_seq(seq)
        return out

    def _logprob(self, index: int, token: int, n_top: int) -> TokenLogprob:
        """log-softmax of the raw logits at batch `index` (before any sampler)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx.handle, index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))
        # In float32 into one reused buffer (no float64 or negated copies of the vocabulary);
        # the sum accumulates in float64.
        if self._exp is None or len(self._exp) != len(logits):
            self._exp = np.empty(len(logits), dtype=np.float32)
        peak = logits.max()
        shifted = np.subtract(logits, peak, out=self._exp)
        np.exp(shifted, out=shifted)
        log_z = float(peak) + math.log(float(shifted.sum(dtype=np.float64)))
        top: tuple[tuple[int, float], ...] = ()
        if n_top > 0:
            best = np.argpartition(logits, len(logits) - n_top)[-n_top:]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple((int(t), float(logits[t]) - log_z) for t in best)
        return TokenLogprob(token, float(logits[token]) - log_z, top)

    def sample_at(self, job_id: int, entry: int) -> int:
        """Draw for `job_id` from the logits of the last step's `entry` (n > 1 choices)."""
        index = self._where[entry]
        if self._last_group is not None and entry not in self._last_group:
            # Its logits were overwritten by a later decode of another adapter set.
            self._failures[job_id] = EngineError(
                "n > 1 choices with a LoRA set other than the model's loaded one"
            )
            return SAMPLE_FAILED
        try:
            token = self._samplers[job_id].sample(self.ctx.handle, index)
        except EngineError as exc:
            self._failures[job_id] = exc
            return SAMPLE_FAILED
        n_top = self._n_probs.get(job_id)
        if n_top is not None:
            self._logprobs[job_id] = self._logprob(index, token, n_top)
        return token

    def take_logprobs(self, job_id: int) -> TokenLogprob | None:
        """The log-probability of the token last drawn for `job_id`, if it asked for them."""
        return self._logprobs.pop(job_id, None)

    def take_failure(self, job_id: int) -> EngineError:
        return self._failures.pop(job_id, None) or EngineError("sampling failed")

    def open_sampler(
        self,
        job_id: int,
        params: SamplingParams,
        history: list[int],
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        # The penalty window: -1 means the whole context, and nothing beyond it exists.
        # llama.cpp allocates the window up front, so an unchecked value is a memory bomb.
        window = penalty_window(params.repeat_last_n, self.config.ctx_per_slot)
        work = GrammarWork(self.config.grammar_step_budget, cancelled) if params.grammar else None
        sampler = Sampler(self.model, dataclasses.replace(params, repeat_last_n=window), work)
        for token in history:
            sampler.accept(token)
        self._samplers[job_id] = sampler
        if params.n_probs is not None:
            self._n_probs[job_id] = params.n_probs

    def close_sampler(self, job_id: int) -> None:
        self._failures.pop(job_id, None)
        self._job_lora.pop(job_id, None)
        self._n_probs.pop(job_id, None)
        self._logprobs.pop(job_id, None)
        sampler = self._samplers.pop(job_id, None)
        if sampler is not None:
            sampler.close()

    def piece(self, token: int, special: bool = False) -> bytes:
        return self.model.piece(token, special)

    def is_eog(self, token: int) -> bool:
        return self.model.is_eog(token)

    # -- KV operations -------------------------------------------------------------------------

    def truncate(self, seq: int, keep: int) -> int:
        return self.ctx.truncate(seq, keep)

    @property
    def window(self) -> int:
        """Positions a sliding-window layer sees (0: none); a saved state keeps only those."""
        return self.ctx.n_swa

    def pos_max(self, seq: int) -> int:
        return self.ctx.pos_max(seq)

    def clear(self, seq: int) -> None:
        self.ctx.clear_seq(seq)

    def seq_state(self, seq: int) -> bytes:
        return self.ctx.seq_state(seq)

    def set_seq_state(self, seq: int, data: bytes) -> bool:
        return self.ctx.set_seq_state(seq, data)

    def save_seq_file(self, seq: int, path: str, tokens: list[int]) -> int:
        return self.ctx.save_seq_file(seq, path, tokens)

    def load_seq_file(self, seq: int, path: str, capacity: int) -> list[int] | None:
        return self.ctx.load_seq_file(seq, path, capacity)

    # -- embeddings ---------------------------------------------------------------------------

    def embed(self, inputs: Sequence[list[int]], rank: bool = False) -> list[list[float]]:
        """L2-normalized mean-pooled embeddings (with `rank`: the reranker's score, as
        llama-server its first output), one decode per input, of the first inputs that fit
        in `EMBED_STEP_SECONDS` (at least one); the rest wait for later steps."""
        if self._embed_batch is None:
            self._embed_batch = Batch(self.config.ctx_per_slot)
        batch = self._embed_batch
        ctx = self._pooling_ctx(rank)
        out: list[list[float]] = []
        started = time.perf_counter()
        for tokens in inputs:
            if out and time.perf_counter() - started >= EMBED_STEP_SECONDS:
                break
            ctx.clear_all()
            batch.clear()
            batch.add(tokens, 0, 0, True)
            batch.logits[: batch.n] = 1
            batch.struct.n_tokens = batch.n
            if ctx.decode(batch.struct) != 0:
                raise DecodeFailed("embedding decode failed")
            if rank:
                out.append([float(ctx.seq_scores(0, self.model.n_cls_out)[0])])
                continue
            vector = ctx.seq_embedding(0)
            norm = float(np.linalg.norm(vector))
            if norm > 0:
                vector = vector / norm
            out.append(vector.astype(float).tolist())
        return out

    def _pooling_ctx(self, rank: bool) -> LlamaContext:
        """The context of mean-pooled embeddings or of rank pooling, made on first use."""
        ctx = self._rank_ctx if rank else self._embed_ctx
        if ctx is None:
            n = self.config.ctx_per_slot
            pooling = (
                llama_cpp.LLAMA_POOLING_TYPE_RANK if rank else llama_cpp.LLAMA_POOLING_TYPE_MEAN
            )
            ctx = LlamaContext(
                self.model, n, 1, n, n, self.config.threads, kv_unified=True, swa_full=False,
                embeddings=True, pooling=pooling,
            )  # fmt: skip
            if rank:
                self._rank_ctx = ctx
            else:
                self._embed_ctx = ctx
        return ctx

    def close(self) -> None:
        for job_id in list(self._samplers):
            self.close_sampler(job_id)
        for ctx in (self._embed_ctx, self._rank_ctx):
            if ctx is not None:
                ctx.close()
        self._embed_ctx = self._rank_ctx = None


def penalty_window(last_n: int, n_ctx: int) -> int:
    """The repeat-penalty window a sampler gets: -1 means the whole slot, and nothing reaches
    past the slot (llama.cpp allocates the window up front)."""
    return n_ctx if last_n < 0 else min(last_n, n_ctx)
