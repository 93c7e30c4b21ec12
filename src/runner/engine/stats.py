"""Counters one engine keeps for /metrics (read from other threads without locks: ints and
floats are replaced atomically under the GIL, and a slightly stale read is fine)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    requests_total: int = 0
    rejected_total: int = 0
    prompt_tokens_total: int = 0
    prompt_seconds_total: float = 0.0
    cache_tokens_total: int = 0
    tokens_predicted_total: int = 0
    predicted_seconds_total: float = 0.0
    n_decode_total: int = 0
    decode_seconds_total: float = 0.0
    sample_seconds_total: float = 0.0  # inside llama_sampler_sample (C, per request)
    # Whole steps (schedule, execute, update, emit), and their parts outside llama_decode
    # and the samplers: planning the step, and handing the step's events to the API.
    step_seconds_total: float = 0.0
    schedule_seconds_total: float = 0.0
    update_seconds_total: float = 0.0  # sampled tokens -> output text, stops, finishes
    emit_seconds_total: float = 0.0
    steps_total: int = 0  # steps that decoded something
    ubatches_total: int = 0  # passes over the weights those decodes made (ubatches.py)
    draft_tokens_total: int = 0  # speculative tokens verified
    draft_accepted_total: int = 0  # of those, kept
    finished: dict[str, int] = field(default_factory=dict)

    def count_finish(self, reason: str) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1
