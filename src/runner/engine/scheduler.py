"""The engine thread's step loop: continuous batching over the slot pool.

Each step packs one token for every generating slot plus prompt chunks of slots still
reading their prompt into one batch, decodes it once, then samples every slot that has
logits. Requests join between steps and leave as soon as they finish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..cache import PromptCache
from .context import Batch, LlamaContext
from .job import Job, Outbox
from .model import LlamaModel
from .prefix import PrefixPlanner
from .sampling import Sampler
from .slots import Slot, SlotState, choose_slot
from .stats import EngineStats
from .types import (
    EngineClosed,
    EngineConfig,
    EngineError,
    FinishEvent,
    FinishReason,
    QueueFull,
    TokenEvent,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Scheduler:
    """Owns the context and the slots. `run` is the engine thread's body; every other
    method that touches llama.cpp runs on that thread (commands are queued via `call`)."""

    def __init__(
        self,
        model: LlamaModel,
        ctx: LlamaContext,
        config: EngineConfig,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.config = config
        self.slots = [Slot(id=i, n_ctx=config.ctx_per_slot) for i in range(config.slots)]
        self.batch = Batch(ctx.n_batch)
        self.stats = EngineStats()
        self.outbox = Outbox()
        self.prefix = PrefixPlanner(self, prompt_cache)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._idle_slots = config.slots
        self._stopping = False
        self._drain = False

    # -- called from any thread --------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise EngineClosed("the model is unloading")
            backlog = len(self._waiting) - self._idle_slots
            if backlog >= self.config.queue_size:
                self.stats.rejected_total += 1
                raise QueueFull(
                    f"all {len(self.slots)} slots are busy and {len(self._waiting)} requests "
                    "are already waiting; retry later"
                )
            self._waiting.append(job)
            self.stats.requests_total += 1
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the engine thread between two steps."""
        future: Future[T] = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(EngineClosed("the model is unloading"))
                return future
            self._commands.append((fn, future))
            self._cond.notify()
        return future

    def stop(self, drain: bool) -> None:
        """Stop the loop: with `drain`, after running and queued requests finish."""
        with self._cond:
            self._stopping = True
            self._drain = drain
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def processing(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    # -- the engine thread ---------------------------------------------------------------

    def run(self) -> None:
        try:
            while not (self._stopping and not self._drain):
                self._run_commands()
                self._admit()
                self.outbox.flush()
                if not any(s.busy for s in self.slots):
                    if self._wait_for_work():
                        break
                    continue
                step_started = time.perf_counter()
                self._step()
                self.outbox.flush()
                self.stats.step_seconds_total += time.perf_counter() - step_started
        except Exception:  # pragma: no cover - a bug; fail every request rather than hang
            log.exception("engine loop crashed")
            self._fail_all(EngineError("internal engine error"))
        finally:
            self._fail_all(EngineClosed("the model was unloaded"))
            self.outbox.flush()
            self._persist()

    def _persist(self) -> None:
        """On unload/shutdown: every slot's prefix goes to the prompt cache, then to disk."""
        cache = self.prefix.cache
        if cache is None:
            return
        try:
            for slot in self.slots:
                self.prefix.save(slot)
            cache.flush_to_disk()
        except Exception:
            log.exception("could not persist the prompt cache")

    def _wait_for_work(self) -> bool:
        """Sleep until something arrives; True when the loop should end."""
        with self._cond:
            while not self._waiting and not self._commands:
                if self._stopping:
                    return True
                self._cond.wait()
            if self._stopping and not self._drain:
                return True
        return False

    def _run_commands(self) -> None:
        while self._commands:
            with self._cond:
                fn, future = self._commands.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # delivered to the caller
                future.set_exception(exc)

    def _admit(self) -> None:
        with self._cond:
            if self._stopping and not self._drain:
                return
            pending = list(self._waiting)
        for job in pending:
            if job.cancelled:
                self._remove_waiting(job)
                self._finish_unstarted(job, "cancelled")
                continue
            slot = self._slot_for(job)
            if slot is None:
                continue
            self._remove_waiting(job)
            self._start(job, slot)

    def _remove_waiting(self, job: Job) -> None:
        with self._cond:
            self._waiting.remove(job)

    def _slot_for(self, job: Job) -> Slot | None:
        req = job.request
        if 0 <= req.id_slot < len(self.slots):
            slot = self.slots[req.id_slot]
            return None if slot.busy else slot
        return choose_slot(
            self.slots, req.prompt_tokens, self.config.similarity, use_cache=req.cache_prompt
        )

    def _start(self, job: Job, slot: Slot) -> None:
        with self._cond:
            self._idle_slots -= 1
        slot.state = SlotState.PROMPT
        slot.job = job
        job.t_prompt_start = time.perf_counter()
        prompt = job.request.prompt_tokens
        try:
            job.sampler = Sampler(self.model, job.request.sampling)
            cached, source = self.prefix.prepare(slot, prompt, job.request.cache_prompt)
        except EngineError as exc:
            self._finish(job, "error", error=exc)
            return
        job.prompt_pos = cached
        job.timings.cache_n = cached
        job.timings.cache_source = source if cached else "none"
        sampling = job.request.sampling
        uses_penalties = sampling.repeat_penalty != 1.0 or sampling.frequency_penalty != 0.0
        if uses_penalties and not sampling.grammar:
            for token in prompt[-sampling.repeat_last_n :]:
                job.sampler.accept(token)

    def _step(self) -> None:
        batch = self.batch
        batch.clear()
        self._drop_cancelled()
        generating = [s for s in self.slots if s.state is SlotState.GENERATING]
        for slot in generating:
            job = slot.job
            assert job is not None
            job.batch_index = batch.add_one(job.next_token, len(slot.tokens), slot.id)
        reading: list[Slot] = []
        for slot in sorted(
            (s for s in self.slots if s.state is SlotState.PROMPT),
            key=lambda s: s.job.submitted_at if s.job else 0.0,
        ):
            if batch.free == 0:
                break
            job = slot.job
            assert job is not None
            prompt = job.request.prompt_tokens
            take = min(len(prompt) - job.prompt_pos, batch.free)
            last = job.prompt_pos + take == len(prompt)
            job.chunk = take
            job.batch_index = batch.add(
                prompt[job.prompt_pos : job.prompt_pos + take], job.prompt_pos, slot.id, last
            )
            reading.append(slot)
        if batch.n == 0:
            return
        self.batch.struct.n_tokens = batch.n
        started = time.perf_counter()
        status = self.ctx.decode(batch.struct)
        elapsed = time.perf_counter() - started
        self.stats.n_decode_total += 1
        self.stats.decode_seconds_total += elapsed
        if status != 0:
            self._decode_failed(status, generating + reading)
            return
        now = time.perf_counter()
        for slot in generating:
            job = slot.job
            assert job is not None
            slot.tokens.append(job.next_token)
            self._sample(slot, job, now)
        for slot in reading:
            job = slot.job
            assert job is not None
            prompt = job.request.prompt_tokens
            slot.tokens.extend(prompt[job.prompt_pos : job.prompt_pos + job.chunk])
            job.prompt_pos += job.chunk
            job.timings.prompt_n += job.chunk
            if job.prompt_pos == len(prompt):
                job.timings.prompt_ms = (now - job.t_prompt_start) * 1e3
                job.t_gen_start = now
                slot.state = SlotState.GENERATING
                self.stats.prompt_tokens_total += job.timings.prompt_n
                self.stats.prompt_seconds_total += job.timings.prompt_ms / 1e3
                self.stats.cache_tokens_total += job.timings.cache_n
                self._sample(slot, job, now)

    def _sample(self, slot: Slot, job: Job, now: float) -> None:
        assert job.sampler is not None
        started = time.perf_counter()
        token = job.sampler.sample(self.ctx.handle, job.batch_index)
        self.stats.sample_seconds_total += time.perf_counter() - started
        job.timings.predicted_n += 1
        req = job.request
        if self.model.is_eog(token) and not req.ignore_eos:
            self._finish(job, "stop")
            return
        job.output_tokens.append(token)
        job.next_token = token
        text = job.stream.push(self.model.piece(token))
        if text or not job.stream.stopped:
            self._emit(job, TokenEvent(text, (token,)))
        if job.stream.stopped:
            self._finish(job, "stop")
        elif (
            req.max_tokens is not None
            and len(job.output_tokens) >= req.max_tokens
            or len(slot.tokens) + 1 >= slot.n_ctx
        ):
            self._finish(job, "length")

    def _drop_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot.job, "cancelled")

    def _decode_failed(self, status: int, slots: list[Slot]) -> None:
        log.error("llama_decode failed with status %d for %d slots", status, len(slots))
        for slot in slots:
            if slot.job is not None:
                self.ctx.clear_seq(slot.id)
                slot.tokens = []
                self._finish(
                    slot.job, "error", error=EngineError(f"llama_decode failed ({status})")
                )

    # -- finishing -----------------------------------------------------------------------

    def _emit(self, job: Job, event: TokenEvent | FinishEvent) -> None:
        if self.outbox.add(job, event):
            return
        assert job.emit is not None
        try:
            job.emit(event)
        except RuntimeError:  # the caller's event loop is gone: nobody is listening
            job.cancelled = True

    def _finish(self, job: Job, reason: FinishReason, error: EngineError | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        now = time.perf_counter()
        if reason in ("stop", "length"):
            tail = job.stream.flush()
            if tail:
                self._emit(job, TokenEvent(tail, ()))
        if job.t_gen_start:
            job.timings.predicted_ms = (now - job.t_gen_start) * 1e3
            self.stats.tokens_predicted_total += job.timings.predicted_n
            self.stats.predicted_seconds_total += job.timings.predicted_ms / 1e3
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        slot = next((s for s in self.slots if s.job is job), None)
        if slot is not None:
            slot.job = None
            slot.state = SlotState.IDLE
            slot.last_used = time.monotonic()
            with self._cond:
                self._idle_slots += 1
        self.stats.count_finish(reason)
        self._emit(
            job,
            FinishEvent(
                finish_reason=reason,
                timings=job.timings,
                prompt_tokens=len(job.request.prompt_tokens),
                completion_tokens=job.timings.predicted_n,
                slot_id=slot.id if slot else -1,
                error=error,
                stop_word=job.stream.stop_word,
            ),
        )

    def _finish_unstarted(self, job: Job, reason: FinishReason, error: EngineError | None = None):
        job.finished = True
        self.stats.count_finish(reason)
        self._emit(
            job, FinishEvent(reason, job.timings, len(job.request.prompt_tokens), 0, -1, error)
        )

    def _fail_all(self, error: EngineError) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot.job, "error", error=error)
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
            commands, self._commands = list(self._commands), deque()
        for job in waiting:
            self._finish_unstarted(job, "error", error)
        for _, future in commands:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
