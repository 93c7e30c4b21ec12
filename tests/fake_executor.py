"""A model-free executor for engine-logic tests: sequences are token lists and the next
token is a fixed function of the sequence so far, so every run is checkable by hand."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from runner.engine.core import EngineCore
from runner.engine.plan import BatchEntry, DecodeFailed, Drafter
from runner.engine.types import EngineConfig, SamplingParams

EOS = 2


def next_token(seq: Sequence[int]) -> int:
    """Never EOS; depends on the last three tokens, so cross-talk between sequences shows."""
    return 10 + (sum(seq[-3:]) * 7 + len(seq)) % 500


class FakeExecutor:
    def __init__(self) -> None:
        self.seqs: dict[int, list[int]] = {}
        self.calls: list[list[tuple[int, int, int]]] = []  # per decode: (seq, start, n)
        self.samplers: set[int] = set()
        self.fail_with: Exception | None = None
        self.decode_status = 0
        self.gate: threading.Event | None = None  # when set, each decode waits for it
        self.before: Callable[[int], None] | None = None  # called with the decode count
        self.rule: Callable[[Sequence[int]], int] = next_token  # the "model"

    def execute(self, entries: Sequence[BatchEntry]) -> list[list[int]]:
        if self.gate is not None:
            self.gate.wait(10)
        if self.before is not None:
            self.before(len(self.calls))
        if self.fail_with is not None:
            raise self.fail_with
        if self.decode_status:
            raise DecodeFailed(f"llama_decode failed ({self.decode_status})")
        self.calls.append([(e.seq, e.start, len(e.tokens)) for e in entries])
        self.last_entries = list(entries)
        out: list[list[int]] = []
        for e in entries:
            seq = self.seqs.setdefault(e.seq, [])
            assert e.start == len(seq), f"seq {e.seq}: position {e.start} after {len(seq)}"
            seq.extend(e.tokens)
            assert e.job_id in self.samplers or not e.sample
            if not e.sample:
                out.append([])
                continue
            first = len(seq) - e.draft  # the sequence up to the first guess
            tokens = [self.rule(seq[:first])]
            for j in range(e.draft):  # a guess stays while it is what would come next
                if tokens[-1] != seq[first + j]:
                    break
                tokens.append(self.rule(seq[: first + j + 1]))
            out.append(tokens)
        return out

    def embed(self, inputs: Sequence[list[int]], rank: bool = False) -> list[list[float]]:
        return [[float(len(x)), float(sum(x))] for x in inputs]

    def open_sampler(
        self,
        job_id: int,
        params: SamplingParams,
        history: list[int],
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.samplers.add(job_id)

    def close_sampler(self, job_id: int) -> None:
        self.samplers.discard(job_id)

    def bind_lora(self, job_id: int, lora: tuple[tuple[int, float], ...]) -> None:
        pass  # the fake "model" has no adapters

    def sample_at(self, job_id: int, entry: int) -> int:
        assert job_id in self.samplers
        return self.rule(self.seqs[self.last_entries[entry].seq])

    def take_logprobs(self, job_id: int) -> None:
        return None

    def piece(self, token: int, special: bool = False) -> bytes:
        return f"[{token}]".encode() if special else f"<{token}>".encode()

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def truncate(self, seq: int, keep: int) -> int:
        tokens = self.seqs.setdefault(seq, [])
        del tokens[keep:]
        return len(tokens)

    def clear(self, seq: int) -> None:
        self.seqs[seq] = []

    def seq_state(self, seq: int) -> bytes:
        return json.dumps(self.seqs.get(seq, [])).encode()

    def set_seq_state(self, seq: int, data: bytes) -> bool:
        self.seqs[seq] = json.loads(data)
        return True


MakeCore = Callable[..., tuple[EngineCore, FakeExecutor]]


def running_cores(defaults: dict[str, Any]) -> Iterator[MakeCore]:
    """Body of a fixture: a factory of engine cores running on fake executors (`defaults`
    under the call's config overrides, with an optional prompt cache and draft model), all
    stopped at teardown."""
    started: list[tuple[EngineCore, threading.Thread]] = []

    def make(
        cache: Any = None, drafter: Drafter | None = None, **overrides: Any
    ) -> tuple[EngineCore, FakeExecutor]:
        config = EngineConfig(**{**defaults, **overrides})
        executor = FakeExecutor()
        core = EngineCore(config, executor, cache, drafter=drafter)
        thread = threading.Thread(target=core.run, daemon=True)
        thread.start()
        started.append((core, thread))
        return core, executor

    yield make
    for core, thread in started:
        core.stop(drain=False)
        thread.join(5)
        assert not thread.is_alive()
