"""The engine step as plain logic: `schedule()` -> a plan, the executor runs it, then
`update(plan, sampled)` -> events. Nothing here touches llama.cpp (that is `Executor`),
so admission, slot choice, prompt pieces, cancellation and failures are unit-tested
against a fake executor.

Each step carries one prompt piece for every slot still reading its prompt (pieces follow
`partition.pieces`, so cached and uncached runs make the same decode calls) and one token
for every generating slot, all in one decode. Long prompts therefore advance piece by piece:
a cancelled request leaves within one piece and other streams keep getting tokens.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

from ..cache import PromptCache
from .activity import ActivityLog
from .admission import Admission
from .budget import Reading, first_pieces, n_ubatch, share_prompt_budget
from .drafting import Drafting
from .job import AnyJob, EmbedJob, Job, Outbox
from .partition import computed_prefix
from .plan import BatchEntry, DecodeFailed, Drafter, Executor, Reader, StepPlan
from .prefix import PrefixPlanner
from .slots import Slot, SlotState
from .speculation import Speculator
from .stats import EngineStats
from .types import (
    EmbeddingsDone,
    EngineConfig,
    EngineError,
    FinishEvent,
    FinishReason,
    Timings,
    TokenEvent,
)
from .ubatches import count_ubatches

__all__ = ["BatchEntry", "DecodeFailed", "Executor", "Scheduler", "StepPlan"]

log = logging.getLogger(__name__)


class Scheduler:
    """Slots, the wait queue and the step logic; lives on the engine thread."""

    def __init__(
        self,
        config: EngineConfig,
        executor: Executor,
        stats: EngineStats,
        outbox: Outbox,
        prompt_cache: PromptCache | None,
        read_async: Reader,
        drafter: Drafter | None = None,
        activity: ActivityLog | None = None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.stats = stats
        self.outbox = outbox
        self.activity = activity or ActivityLog()
        self.slots = [Slot(id=i, n_ctx=config.ctx_per_slot) for i in range(config.slots)]
        self.prefix = PrefixPlanner(self.slots, config, executor, prompt_cache)
        self.admission = Admission(
            self.slots, config, executor, self.prefix, read_async, self._finish
        )
        self.embeds: deque[EmbedJob] = deque()
        self.drafting = Drafting(
            Speculator(config.spec_draft_max, config.spec_adaptive),
            drafter,
            n_ubatch(config),
            config.kv_unified,
        )
        self._clock = 0.0  # decode + sample seconds when the current plan was made

    @property
    def spec(self) -> Speculator:
        return self.drafting.spec

    def calibrate(self) -> None:
        """Time decodes of the sizes verification makes, once, before serving (slot 0 is
        still empty). Executors that cannot (the fake) leave the cost model learning online."""
        time_rows = getattr(self.executor, "time_rows", None)
        if not (self.spec.enabled and self.spec.adaptive and time_rows and self.slots):
            return
        try:
            self.drafting.calibrate(time_rows, self.slots[0].id)
        except EngineError as exc:
            log.warning("could not time decode sizes (%s); learning them online", exc)

    # -- intake ---------------------------------------------------------------------------

    def add(self, job: AnyJob) -> None:
        if isinstance(job, EmbedJob):
            self.embeds.append(job)
        else:
            self.admission.waiting.append(job)

    @property
    def waiting(self) -> deque[Job]:
        return self.admission.waiting

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.embeds or any(s.busy for s in self.slots))

    @property
    def loading(self) -> bool:
        return self.admission.loading

    # -- schedule --------------------------------------------------------------------------

    def schedule(self) -> StepPlan | None:
        """What to decode this step; None when nothing can run now."""
        self.drafting.begin_step()
        self.admission.drop_cancelled()
        self.admission.finish_loads()
        self.admission.admit()
        config = self.config
        budget = config.n_batch
        reading = sorted(
            (s for s in self.slots if s.state is SlotState.PROMPT and s.job is not None),
            key=lambda s: s.job.submitted_at if s.job else 0.0,
        )
        reads = [
            Reading(len(s.job.request.prompt_tokens), s.job.prompt_pos, s.job.request.marks)
            for s in reading
            if s.job
        ]
        # Decode first: every generating slot gets its token, and guesses (of one common
        # length) what the reading slots' next pieces leave; then the reading slots share
        # what is left of the budget.
        generating = [(s, s.job) for s in self.slots if s.state is SlotState.GENERATING and s.job]
        generating = generating[:budget]
        budget -= len(generating)
        reserve = first_pieces(reads, config.prefill_block)
        drafts = self.drafting.plan(generating, max(0, budget - reserve))
        rows: dict[int, tuple[BatchEntry, Slot]] = {}
        for (slot, job), draft in zip(generating, drafts, strict=True):
            budget -= len(draft)
            tokens = [job.next_token, *draft]
            entry = BatchEntry(slot.id, tokens, len(slot.tokens), job.id, True, len(draft))
            rows[slot.id] = (entry, slot)
        ends = share_prompt_budget(reads, budget, config.prefill_block, n_ubatch(config))
        for slot, b in zip(reading, ends, strict=True):
            job = slot.job
            assert job is not None
            a, prompt = job.prompt_pos, job.request.prompt_tokens
            if b > a:
                entry = BatchEntry(slot.id, prompt[a:b], a, job.id, b == len(prompt))
                rows[slot.id] = (entry, slot)
        embed, inputs = self._embed_work()
        if not rows and embed is None:
            return None
        # In sequence order: llama.cpp puts only consecutive sequence ids in one ubatch.
        order = sorted(rows)
        entries = [rows[i][0] for i in order]
        ubatches = count_ubatches(
            [(e.seq, len(e.tokens)) for e in entries], n_ubatch(config), config.kv_unified
        )
        self._clock = self.stats.decode_seconds_total + self.stats.sample_seconds_total
        return StepPlan(
            entries,
            [rows[i][1] for i in order],
            embed,
            inputs,
            generating_only=len(rows) == len(generating),
            ubatches=ubatches,
        )

    def _embed_work(self) -> tuple[EmbedJob | None, list[list[int]] | None]:
        while self.embeds and self.embeds[0].cancelled:
            self._finish_embed(self.embeds.popleft(), "cancelled")
        if not self.embeds:
            return None, None
        job = self.embeds[0]
        if not job.t_start:
            job.t_start = time.perf_counter()
        start = len(job.vectors)
        take, total = [], 0
        for tokens in job.inputs[start:]:
            if take and total + len(tokens) > self.config.n_ubatch:
                break
            take.append(tokens)
            total += len(tokens)
        return job, take

    # -- update ----------------------------------------------------------------------------

    def update(self, plan: StepPlan, sampled: Sequence[Sequence[int]]) -> None:
        now = time.perf_counter()
        self.stats.steps_total += 1
        self.stats.ubatches_total += plan.ubatches
        if plan.generating_only:
            spent = self.stats.decode_seconds_total + self.stats.sample_seconds_total
            rows = sum(len(e.tokens) for e in plan.entries)
            self.spec.cost.observe(rows, spent - self._clock)
        for pos, (entry, slot, tokens) in enumerate(
            zip(plan.entries, plan.slots, sampled, strict=True)
        ):
            job = slot.job
            if job is None or job.id != entry.job_id:
                continue
            job.timings.n_steps += 1
            job.timings.n_ubatches += plan.ubatches
            if entry.draft:
                if not self._verified(slot, job, entry, len(tokens) - 1):
                    continue
            else:
                slot.tokens.extend(entry.tokens)
            if slot.state is SlotState.PROMPT:
                self._prompt_advanced(slot, job, len(entry.tokens), now)
                if slot.state is SlotState.GENERATING and job.followers:
                    self._fork(slot, job, pos, now)
            at = entry.start + len(entry.tokens) - entry.draft  # where the first one goes
            for i, token in enumerate(tokens):
                if job.finished:
                    break  # a stop inside the accepted run: the rest is not output
                self._sampled(slot, job, token, now, at + i)

    def _verified(self, slot: Slot, job: Job, entry: BatchEntry, accepted: int) -> bool:
        """Keep the KV of the guesses the sampler agreed with, drop the rest; False when the
        rollback failed (the request then ends with an error)."""
        slot.tokens.extend(entry.tokens[: 1 + accepted])
        job.timings.draft_n += entry.draft
        job.timings.draft_n_accepted += accepted
        self.stats.draft_tokens_total += entry.draft
        self.stats.draft_accepted_total += accepted
        self.drafting.verified(slot, job, entry.draft, accepted)
        if accepted == entry.draft:
            return True
        keep = len(slot.tokens)
        if self.executor.truncate(slot.id, keep) == keep:
            return True
        self.executor.clear(slot.id)
        slot.forget()
        self._finish(job, "error", error=DecodeFailed("rolling back rejected draft tokens failed"))
        return False

    def update_embed(self, job: EmbedJob, vectors: list[list[float]]) -> None:
        job.vectors.extend(vectors)
        if len(job.vectors) == len(job.inputs):
            self.embeds.remove(job)
            self._finish_embed(job, "stop")

    def _prompt_advanced(self, slot: Slot, job: Job, n: int, now: float) -> None:
        prompt = job.request.prompt_tokens
        job.prompt_pos += n
        job.timings.prompt_n += n
        block, n = self.config.prefill_block, len(prompt)
        # Pieces end at cuts: whole blocks, the request's marks and n - TAIL.
        slot.exact = computed_prefix(n, block, job.request.marks, upto=job.prompt_pos)
        if job.prompt_pos < n:
            return
        job.timings.prompt_ms = (now - job.t_prompt_start) * 1e3
        job.t_gen_start = now
        slot.state = SlotState.GENERATING
        self.stats.prompt_tokens_total += job.timings.prompt_n
        self.stats.prompt_seconds_total += job.timings.prompt_ms / 1e3
        self.stats.cache_tokens_total += job.timings.cache_n

    def _fork(self, slot: Slot, job: Job, entry: int, now: float) -> None:
        """The shared prompt is computed: each waiting choice gets a copy of its state and
        draws its first token from the same logits with its own sampler."""
        state = self.executor.seq_state(slot.id)
        for follower in job.followers:
            target = next((s for s in self.slots if s.job is follower), None)
            if target is None or follower.finished:
                continue
            if not self.executor.set_seq_state(target.id, state):
                self._finish(follower, "error", error=EngineError("could not copy the prompt"))
                continue
            target.tokens = list(slot.tokens)
            target.exact = slot.exact
            target.lora = slot.lora
            target.state = SlotState.GENERATING
            follower.prompt_pos = len(follower.request.prompt_tokens)
            follower.timings.cache_n = follower.prompt_pos
            follower.timings.cache_source = "slot"
            follower.timings.prompt_ms = job.timings.prompt_ms
            follower.t_gen_start = now
            token = self.executor.sample_at(follower.id, entry)
            self._sampled(target, follower, token, now, len(target.tokens))

    def _sampled(self, slot: Slot, job: Job, token: int, now: float, position: int) -> None:
        """`token` was sampled; it would be decoded at `position` of the slot's sequence."""
        if token < 0:  # the job's sampler failed (a grammar over its budget...): say why
            self._finish(job, "error", error=self.executor.take_failure(job.id))
            return
        job.timings.predicted_n += 1
        req = job.request
        if self.executor.is_eog(token) and not req.ignore_eos:
            self._finish(job, "stop")
            return
        job.output_tokens.append(token)
        job.next_token = token
        text = job.stream.push(self.executor.piece(token, req.render_special))
        logprob = self.executor.take_logprobs(job.id)
        if text or not job.stream.stopped:
            self.outbox.add(job, TokenEvent(text, (token,), (logprob,) if logprob else ()))
        if job.stream.stopped:
            self._finish(job, "stop")
        elif (
            req.max_tokens is not None
            and len(job.output_tokens) >= req.max_tokens
            or position + 1 >= slot.n_ctx
        ):
            self._finish(job, "length")

    def decode_failed(self, plan: StepPlan, error: EngineError) -> None:
        """A decode failed: its requests end with the error, their sequences are wiped."""
        log.error("decode failed for %d slots: %s", len(plan.slots), error)
        for slot in plan.slots:
            if slot.job is not None:
                self.executor.clear(slot.id)
                slot.forget()
                self._finish(slot.job, "error", error=error)

    def embed_failed(self, job: EmbedJob, error: EngineError) -> None:
        if job in self.embeds:
            self.embeds.remove(job)
        self._finish_embed(job, "error", error)

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, job: Job, reason: FinishReason, error: EngineError | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        for follower in job.followers:  # still waiting for this job's prompt
            if any(s.job is follower and s.state is SlotState.FORKING for s in self.slots):
                self._finish(follower, reason, error)
        now = time.perf_counter()
        if reason in ("stop", "length"):
            tail = job.stream.flush()
            if tail:
                self.outbox.add(job, TokenEvent(tail, ()))
        if job.t_gen_start:
            job.timings.predicted_ms = (now - job.t_gen_start) * 1e3
            self.stats.tokens_predicted_total += job.timings.predicted_n
            self.stats.predicted_seconds_total += job.timings.predicted_ms / 1e3
        self.executor.close_sampler(job.id)
        slot = next((s for s in self.slots if s.job is job), None)
        if slot is not None:
            slot.job = None
            slot.state = SlotState.IDLE
            slot.last_used = time.monotonic()
            self.spec.release(slot.id)
        self.stats.count_finish(reason)
        event = FinishEvent(
            finish_reason=reason,
            timings=job.timings,
            prompt_tokens=len(job.request.prompt_tokens),
            completion_tokens=job.timings.predicted_n,
            slot_id=slot.id if slot else -1,
            error=error,
            stop_word=job.stream.stop_word,
        )
        # Logged before the event goes out: a caller that has its answer finds the line.
        self.activity.request_done(job, event)
        self.outbox.add(job, event)

    def _finish_embed(
        self, job: EmbedJob, reason: FinishReason, error: EngineError | None = None
    ) -> None:
        if job.finished:
            return
        job.finished = True
        self.stats.count_finish(reason)
        ms = (time.perf_counter() - job.t_start) * 1e3 if job.t_start else 0.0
        self.activity.embeddings_done(job, reason, ms)
        if reason != "stop":
            self.outbox.add(job, FinishEvent(reason, Timings(), job.n_tokens, 0, -1, error))
            return
        timings = Timings(prompt_n=job.n_tokens, prompt_ms=ms)
        counts = [len(x) for x in job.inputs]
        self.outbox.add(job, EmbeddingsDone(job.vectors, counts, timings))

    def fail_all(self, error: EngineError) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot.job, "error", error=error)
        for job in self.waiting:
            self._finish(job, "error", error=error)
        self.waiting.clear()
        for ejob in self.embeds:
            self._finish_embed(ejob, "error", error)
        self.embeds.clear()
        self.admission.release_loads()

    def persist(self) -> None:
        """On unload/shutdown: every slot's reusable prefix goes to the prompt cache."""
        cache = self.prefix.cache
        if cache is None:
            return
        for slot in self.slots:
            self.prefix.save(slot)
        cache.flush_to_disk()
