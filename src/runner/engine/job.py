"""Requests in flight, where their events go, and the handles callers hold."""

from __future__ import annotations

import asyncio
import itertools
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from .textstream import TextStream
from .types import EmbeddingsDone, Event, FinishEvent, GenerationRequest, Timings, TokenEvent

_job_ids = itertools.count(1)


class LoopSink:
    """Delivers events into an asyncio queue on the caller's event loop. The engine hands
    them over in one batch per loop per step (see `Outbox`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def deliver(self, events: list[Event]) -> None:  # runs on `loop`
        for event in events:
            self.queue.put_nowait(event)


class ThreadSink:
    """Delivers events into a thread-safe queue, for callers that run no event loop."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def deliver(self, events: list[Event]) -> None:
        for event in events:
            self.queue.put(event)


Sink = LoopSink | ThreadSink


@dataclass(eq=False)
class Job:
    """Engine-side state of one generation request. Only the engine thread mutates it,
    except `cancelled`, which any thread may set."""

    request: GenerationRequest
    sink: Sink
    id: int = field(default_factory=lambda: next(_job_ids))
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    prompt_pos: int = 0  # prompt tokens already in the KV cache
    next_token: int = -1  # sampled, not yet in the KV cache
    output_tokens: list[int] = field(default_factory=list)
    stream: TextStream = field(init=False)
    timings: Timings = field(default_factory=Timings)
    t_prompt_start: float = 0.0
    t_gen_start: float = 0.0
    finished: bool = False
    # n > 1: the other choices, which copy this job's prompt state instead of computing it.
    followers: list[Job] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stream = TextStream(self.request.stop)


@dataclass(eq=False)
class EmbedJob:
    """An embeddings request: its inputs are decoded a few at a time between steps."""

    inputs: list[list[int]]
    sink: Sink
    id: int = field(default_factory=lambda: next(_job_ids))
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    vectors: list[list[float]] = field(default_factory=list)
    # Rank pooling (rerank): each input is a query-document pair, its vector one score.
    rank: bool = False
    t_start: float = 0.0
    finished: bool = False

    @property
    def n_tokens(self) -> int:
        return sum(len(x) for x in self.inputs)


AnyJob = Job | EmbedJob


class Outbox:
    """Events made during one engine step, handed to each event loop with one wakeup.

    One `call_soon_threadsafe` per loop per step instead of one per request per step: each
    is a pipe write and a GIL hand-off, which adds up with many streams on a fast GPU.
    """

    def __init__(self) -> None:
        self._pending: dict[LoopSink, list[Event]] = {}
        self._jobs: dict[LoopSink, AnyJob] = {}

    def add(self, job: AnyJob, event: Event | EmbeddingsDone) -> None:
        sink = job.sink
        if isinstance(sink, ThreadSink):
            sink.deliver([event])
            return
        self._pending.setdefault(sink, []).append(event)
        self._jobs[sink] = job

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        jobs, self._jobs = self._jobs, {}
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[LoopSink, list[Event]]]] = {}
        for sink, events in pending.items():
            by_loop.setdefault(sink.loop, []).append((sink, events))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                for sink, _ in items:
                    jobs[sink].cancelled = True


def _deliver(items: list[tuple[LoopSink, list[Event]]]) -> None:
    for sink, events in items:
        sink.deliver(events)


class RequestHandle:
    """What `Engine.submit` returns to async code: iterate the events, or cancel.

    Leaving the `async for` early (client gone) cancels the request; its slot is free at
    the engine's next step and the tokens it computed stay cached.
    """

    def __init__(self, job: Job, sink: LoopSink, cancel: Callable[[Job], None]) -> None:
        self.job = job
        self._queue = sink.queue
        self._cancel = cancel
        self.final: FinishEvent | None = None

    def cancel(self) -> None:
        if self.final is None and not self.job.cancelled:
            self._cancel(self.job)

    async def events(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self._queue.get()
                if isinstance(event, FinishEvent):
                    self.final = event
                    yield event
                    return
                yield event
        finally:
            if self.final is None:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()


def thread_events(sink: ThreadSink, timeout: float | None = None) -> Iterator[Event]:
    """A blocking caller's view of a `ThreadSink`: events up to and including the finish."""
    while True:
        event = sink.queue.get(timeout=timeout)
        yield event
        if isinstance(event, FinishEvent):
            return


@dataclass(frozen=True)
class Completion:
    """A finished request, collected."""

    text: str
    tokens: list[int]
    finish: FinishEvent

    @property
    def timings(self) -> Timings:
        return self.finish.timings


def collect(events: Iterator[Event]) -> Completion:
    parts: list[str] = []
    tokens: list[int] = []
    for event in events:
        if isinstance(event, TokenEvent):
            parts.append(event.text)
            tokens.extend(event.token_ids)
        else:
            return Completion("".join(parts), tokens, event)
    raise RuntimeError("event stream ended without a finish event")
