"""A request in flight, and the handles callers use to read its events."""

from __future__ import annotations

import asyncio
import itertools
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from .sampling import Sampler
from .textstream import TextStream
from .types import Event, FinishEvent, GenerationRequest, Timings, TokenEvent

_job_ids = itertools.count(1)

EventSink = Callable[[Event], None]


@dataclass(eq=False)
class Job:
    """Engine-side state of one request. Only the engine thread mutates it, except
    `cancelled`, which any thread may set."""

    request: GenerationRequest
    # Where events go: a blocking caller's sink, or an async caller's (loop, queue), which
    # the scheduler serves through its Outbox (one wakeup per loop per step).
    emit: EventSink | None = None
    channel: tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]] | None = None
    id: int = field(default_factory=lambda: next(_job_ids))
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    # filled in by the scheduler
    sampler: Sampler | None = None
    prompt_pos: int = 0  # prompt tokens already in the KV cache
    batch_index: int = -1  # where this job's logits are in the current batch
    chunk: int = 0  # prompt tokens this job put in the current batch
    next_token: int = -1  # sampled, not yet in the KV cache
    output_tokens: list[int] = field(default_factory=list)
    stream: TextStream = field(init=False)
    timings: Timings = field(default_factory=Timings)
    t_prompt_start: float = 0.0
    t_gen_start: float = 0.0
    finished: bool = False

    def __post_init__(self) -> None:
        self.stream = TextStream(self.request.stop)


class Outbox:
    """Events made during one engine step, handed to each event loop with one wakeup.

    One `call_soon_threadsafe` per loop per step instead of one per request per step: each
    is a pipe write and a GIL hand-off, which adds up with many streams on a fast GPU.
    """

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Event]]] = {}

    def add(self, job: Job, event: Event) -> bool:
        if job.channel is None:
            return False
        self._by_loop.setdefault(job.channel[0], []).append((job, event))
        return True

    def flush(self) -> None:
        pending, self._by_loop = self._by_loop, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                for job, _ in items:
                    job.cancelled = True


def _deliver(items: list[tuple[Job, Event]]) -> None:
    for job, event in items:
        assert job.channel is not None
        job.channel[1].put_nowait(event)


class RequestHandle:
    """What `Engine.submit` returns to async code: iterate the events, or cancel.

    Leaving the `async for` early (client gone) cancels the request; its slot is free at
    the engine's next step and the tokens it computed stay cached.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.job: Job | None = None
        self.final: FinishEvent | None = None
        self.on_cancel: Callable[[Job], None] | None = None

    @property
    def queue(self) -> asyncio.Queue[Event]:
        return self._queue

    def cancel(self) -> None:
        if self.job is not None and self.final is None:
            self.job.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel(self.job)

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


class SyncHandle:
    """The blocking twin of RequestHandle, for scripts and tests that run no event loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.final: FinishEvent | None = None

    def sink(self, event: Event) -> None:
        self._queue.put(event)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if isinstance(event, FinishEvent):
                self.final = event
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
