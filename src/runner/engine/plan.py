"""What one engine step runs: the batch entries the scheduler plans, and the executor that
runs them (llama.cpp in `executor.py`, a fake in the tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .prefix import KvOps
from .types import EngineError, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from .job import EmbedJob
    from .slots import Slot


@dataclass(slots=True)
class BatchEntry:
    """Tokens of one slot's sequence in this step's decode; `sample` asks for a token
    drawn from the logits of the last one (with the job's sampler).

    With `draft` > 0 the last `draft` tokens are guesses (speculation): the executor samples
    at the position before the first guess and, while each sampled token equals the guess
    that follows it, at that guess's position too. It returns every token it sampled."""

    seq: int
    tokens: list[int]
    start: int
    job_id: int
    sample: bool
    draft: int = 0


@dataclass
class StepPlan:
    entries: list[BatchEntry]
    slots: list[Slot]
    embed: EmbedJob | None = None
    embed_inputs: list[list[int]] | None = None
    generating_only: bool = False  # no prompt pieces: the step's time prices draft rows
    ubatches: int = 0  # passes over the weights llama.cpp makes of `entries` (ubatches.py)


class DecodeFailed(EngineError):
    """A decode call failed; the requests in it end with this error."""


class Drafter(Protocol):
    """A draft model (`draft.py`): guesses a slot's next tokens; engine thread only."""

    def propose(self, seq: int, tokens: Sequence[int], k: int) -> list[int]: ...
    def seconds(self, k: int) -> float: ...
    def calibrate(self) -> None: ...


class Executor(KvOps, Protocol):
    """Runs plans on a model. The scheduler calls it only from the engine thread."""

    def execute(self, entries: Sequence[BatchEntry]) -> list[list[int]]:
        """Decode the entries in one call; per entry, the tokens sampled (none when it does
        not `sample`, one without a draft, one more than the guesses kept with one)."""
        ...

    def embed(self, inputs: Sequence[list[int]], rank: bool = False) -> list[list[float]]:
        """Vectors of the first inputs, in order: all of them, or as many as one step may
        take (the scheduler offers the rest in later steps). With `rank`, each vector is
        the model's relevance score of the input (rank pooling) alone."""
        ...

    def open_sampler(
        self,
        job_id: int,
        params: SamplingParams,
        history: list[int],
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """A sampler for `job_id`; `cancelled()` says when to stop its grammar's work."""
        ...

    def close_sampler(self, job_id: int) -> None: ...
    def bind_lora(self, job_id: int, lora: tuple[tuple[int, float], ...]) -> None:
        """Decode `job_id`'s rows with this LoRA set (`lora.LoraSet`) until its sampler
        is closed."""
        ...

    def take_logprobs(self, job_id: int) -> TokenLogprob | None: ...
    def take_failure(self, job_id: int) -> EngineError:
        """Why sampling for `job_id` failed, after a step returned -1 as its token."""
        ...

    def sample_at(self, job_id: int, entry: int) -> int: ...
    def piece(self, token: int, special: bool = False) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...


Reader = Callable[[Callable[[], bytes]], "Future[bytes]"]
