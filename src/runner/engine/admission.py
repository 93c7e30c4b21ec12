"""Admission: the wait queue, which slot a request gets, where its prefix comes from
(including disk reads on an I/O thread), and n choices that share one prompt."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ..cache import CacheEntryCorrupt
from .job import Job
from .plan import Executor, Reader
from .prefix import Decision, PrefixPlanner
from .slots import Slot, SlotState, choose_slot
from .types import EngineConfig, EngineError, GenerationRequest

log = logging.getLogger(__name__)

Ender = Callable[..., None]  # Scheduler._finish(job, reason, error=None)


@dataclass
class _Load:
    """A disk hit being read on an I/O thread for `job`, which waits in `slot`."""

    future: Future[bytes]
    decision: Decision
    job: Job
    slot: Slot


class Admission:
    """Starts waiting jobs in free slots; `end` finishes a job that cannot start."""

    def __init__(
        self,
        slots: list[Slot],
        config: EngineConfig,
        executor: Executor,
        prefix: PrefixPlanner,
        read_async: Reader,
        end: Ender,
    ) -> None:
        self.slots = slots
        self.config = config
        self.executor = executor
        self.prefix = prefix
        self.waiting: deque[Job] = deque()
        self._read_async = read_async
        self._loads: dict[int, _Load] = {}
        self._end = end

    @property
    def n_idle(self) -> int:
        return sum(1 for s in self.slots if not s.busy)

    @property
    def loading(self) -> bool:
        return bool(self._loads)

    def admit(self) -> None:
        for job in list(self.waiting):
            if job.followers and self.n_idle < 1 + len(job.followers):
                continue  # n choices start together, when n slots are free
            slot = self._slot_for(job)
            if slot is None:
                continue
            self.waiting.remove(job)
            for follower in job.followers:
                self._start_follower(follower, slot)
            self._start(job, slot)

    def _start_follower(self, job: Job, leader_slot: Slot) -> None:
        idle = [s for s in self.slots if not s.busy and s is not leader_slot]
        slot = choose_slot(idle, (), 1.0, keep_prefixes=self.prefix.cache is None)
        assert slot is not None  # admit() waits for enough idle slots
        self.prefix.release(slot)
        slot.job = job
        slot.state = SlotState.FORKING
        job.t_prompt_start = time.perf_counter()
        try:
            self.executor.open_sampler(
                job.id, job.request.sampling, _history(job.request), lambda: job.cancelled
            )
            self.executor.bind_lora(job.id, job.request.lora or ())
        except EngineError as exc:
            self._end(job, "error", error=exc)

    def _slot_for(self, job: Job) -> Slot | None:
        req = job.request
        if 0 <= req.id_slot < len(self.slots):
            slot = self.slots[req.id_slot]
            return None if slot.busy else slot
        return choose_slot(
            self.slots,
            req.prompt_tokens,
            self.config.similarity,
            req.cache_prompt,
            req.cache_key,
            keep_prefixes=self.prefix.cache is None,
        )

    def _start(self, job: Job, slot: Slot) -> None:
        slot.job = job
        slot.state = SlotState.PROMPT
        slot.cache_key = job.request.cache_key
        job.t_prompt_start = time.perf_counter()
        req = job.request
        try:
            self.executor.open_sampler(job.id, req.sampling, _history(req), lambda: job.cancelled)
            lora = req.lora or ()
            self.executor.bind_lora(job.id, lora)
            decision = self.prefix.prepare(
                slot, req.prompt_tokens, req.cache_prompt, req.marks, lora
            )
        except EngineError as exc:
            self._end(job, "error", error=exc)
            return
        if decision.load is not None:
            slot.state = SlotState.LOADING
            future = self._read_async(decision.load.load)
            self._loads[job.id] = _Load(future, decision, job, slot)
            return
        self._prompt_from(job, decision)

    def _prompt_from(self, job: Job, decision: Decision) -> None:
        job.prompt_pos = decision.n_tokens
        job.timings.cache_n = decision.n_tokens
        job.timings.cache_source = decision.source if decision.n_tokens else "none"
        if job.request.breakpoints:
            written, yielded = self.prefix.pin(job.request, decision.n_tokens)
            job.timings.cache_written, job.timings.pins_yielded = written, yielded

    def finish_loads(self) -> None:
        for job_id, load in list(self._loads.items()):
            if not load.future.done() and not load.job.finished:
                continue
            del self._loads[job_id]
            hit = load.decision.load
            assert hit is not None
            hit.release()
            job, slot = load.job, load.slot
            if job.finished or slot.job is not job:  # cancelled while reading
                continue
            slot.state = SlotState.PROMPT
            try:
                state = load.future.result()
            except CacheEntryCorrupt as exc:
                log.warning("prompt cache entry unusable (%s); recomputing", exc)
                self._prompt_from(job, Decision(0, "none"))
                continue
            req = job.request
            self._prompt_from(
                job, self.prefix.install(slot, req.prompt_tokens, state, hit, req.marks)
            )

    def drop_cancelled(self) -> None:
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
            self._end(job, "cancelled")
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._end(slot.job, "cancelled")

    def release_loads(self) -> None:
        for load in self._loads.values():
            load.future.cancel()
            if load.decision.load is not None:
                load.decision.load.release()
        self._loads.clear()


def _history(request: GenerationRequest) -> list[int]:
    """Prompt tokens the penalty samplers must have seen (none with a grammar)."""
    sampling = request.sampling
    if not sampling.uses_penalties or sampling.grammar:
        return []
    return request.prompt_tokens[-sampling.repeat_last_n :]
