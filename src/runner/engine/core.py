"""The engine thread: takes requests and commands from other threads, runs the
schedule -> execute -> update loop, and dies cleanly.

If the loop raises (a bug, or a llama.cpp failure outside a decode), the core is dead: every
request in it fails with the reason, later submissions are refused at once, and the loader
replaces the engine (as Docker Model Runner evicts a defunct runner).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .activity import ActivityLog
from .job import AnyJob, Job, Outbox
from .plan import DecodeFailed, Drafter, Executor
from .scheduler import Scheduler
from .stats import EngineStats
from .types import EngineClosed, EngineConfig, EngineDead, EngineError, QueueFull

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineCore:
    def __init__(
        self,
        config: EngineConfig,
        executor: Executor,
        prompt_cache: Any = None,
        stats: EngineStats | None = None,
        drafter: Drafter | None = None,
        activity: ActivityLog | None = None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.stats = stats or EngineStats()
        self.outbox = Outbox()
        # Disk reads of cached prefixes run here, never on the step.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-read")
        self.scheduler = Scheduler(
            config,
            executor,
            self.stats,
            self.outbox,
            prompt_cache,
            self._read_async,
            drafter,
            activity,
        )
        self._cond = threading.Condition()
        self._intake: deque[AnyJob] = deque()
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._stopping = False
        self._drain = False
        self.dead: str | None = None
        self.snapshot: list[dict[str, Any]] = [s.describe() for s in self.scheduler.slots]
        self.n_waiting = 0
        self.n_busy = 0

    # -- any thread ------------------------------------------------------------------------

    def submit(self, job: AnyJob) -> None:
        with self._cond:
            self._refuse_if_closed()
            backlog = len(self._intake) + self.n_waiting - (self.config.slots - self.n_busy)
            if backlog >= self.config.queue_size:
                self.stats.rejected_total += 1
                raise QueueFull(
                    f"all {self.config.slots} slots are busy and {self.n_waiting} requests "
                    "are already waiting; retry later"
                )
            self._intake.append(job)
            self.n_waiting += 1
            self.stats.requests_total += 1
            self._cond.notify()

    def cancel(self, job: AnyJob) -> None:
        job.cancelled = True
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the engine thread between two steps."""
        future: Future[T] = Future()
        with self._cond:
            try:
                self._refuse_if_closed()
            except EngineError as exc:
                future.set_exception(exc)
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
    def busy(self) -> bool:
        return self.dead is None and (self.n_busy > 0 or self.n_waiting > 0)

    def _refuse_if_closed(self) -> None:
        if self.dead is not None:
            raise EngineDead(f"the engine failed ({self.dead}); retry to load it again")
        if self._stopping:
            raise EngineClosed("the model is unloading")

    def _read_async(self, read: Callable[[], bytes]) -> Future[bytes]:
        future = self._io.submit(read)
        future.add_done_callback(lambda _: self.wake())
        return future

    # -- the engine thread -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.scheduler.calibrate()
            self._loop()
        except Exception as exc:
            self.dead = f"{type(exc).__name__}: {exc}"
            log.exception("engine loop crashed")
            self.scheduler.fail_all(EngineDead(f"the engine failed ({self.dead})"))
        finally:
            with self._cond:
                self._stopping = True
            self._take_intake()
            self.scheduler.fail_all(EngineClosed("the model was unloaded"))
            self.outbox.flush()
            self._publish()
            if self.dead is None:
                self._persist()
            self._io.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        sched = self.scheduler
        while True:
            stop_now = self._take_intake()
            if stop_now:
                return
            self._run_commands()
            # The step's clock covers all of it: planning, decoding, sampling, turning tokens
            # into events and handing them over (stats splits the parts).
            started = time.perf_counter()
            plan = sched.schedule()
            scheduled = time.perf_counter()
            self.outbox.flush()
            self._publish()
            if plan is None:
                sched.activity.idle()
                if self._wait_for_work():
                    return
                continue
            stats = self.stats
            stats.schedule_seconds_total += scheduled - started
            stats.emit_seconds_total += time.perf_counter() - scheduled
            if plan.entries:
                try:
                    sampled = self.executor.execute(plan.entries)
                except DecodeFailed as exc:
                    sched.decode_failed(plan, exc)
                else:
                    executed = time.perf_counter()
                    sched.update(plan, sampled)
                    stats.update_seconds_total += time.perf_counter() - executed
            if plan.embed is not None and plan.embed_inputs is not None:
                try:
                    vectors = self.executor.embed(plan.embed_inputs, plan.embed.rank)
                except DecodeFailed as exc:
                    sched.embed_failed(plan.embed, exc)
                else:
                    sched.update_embed(plan.embed, vectors)
            emitting = time.perf_counter()
            self.outbox.flush()
            done = time.perf_counter()
            stats.emit_seconds_total += done - emitting
            stats.step_seconds_total += done - started
            self._log_activity()

    def _log_activity(self) -> None:
        sched = self.scheduler
        if sched.activity.interval <= 0:
            return
        running = [s.job for s in sched.slots if isinstance(s.job, Job)]
        sched.activity.tick(self.stats, running, len(sched.waiting) + len(sched.embeds))

    def _take_intake(self) -> bool:
        """Move new jobs into the scheduler; True when the loop must end now."""
        with self._cond:
            jobs, self._intake = self._intake, deque()
            stop_now = self._stopping and not self._drain
        for job in jobs:
            self.scheduler.add(job)
        return stop_now

    def _publish(self) -> None:
        sched = self.scheduler
        self.snapshot = [s.describe() for s in sched.slots]
        self.n_busy = sum(1 for s in sched.slots if s.busy)
        with self._cond:
            self.n_waiting = len(self._intake) + len(sched.waiting) + len(sched.embeds)

    def _wait_for_work(self) -> bool:
        """Sleep until something arrives; True when the loop should end."""
        with self._cond:
            while not self._intake and not self._commands:
                if self._stopping and not self.scheduler.has_work:
                    return True
                if self.scheduler.loading or self._stopping:
                    self._cond.wait(timeout=0.05)
                    return False
                if self._has_cancelled():
                    return False
                self._cond.wait()
                if self._has_cancelled():
                    return False
        return False

    def _has_cancelled(self) -> bool:
        sched = self.scheduler
        return any(j.cancelled for j in sched.waiting) or any(
            s.job is not None and s.job.cancelled for s in sched.slots
        )

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

    def _persist(self) -> None:
        try:
            self.scheduler.persist()
        except Exception:
            log.exception("could not persist the prompt cache")
        with self._cond:
            commands, self._commands = list(self._commands), deque()
        for _, future in commands:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineClosed("the model was unloaded"))
