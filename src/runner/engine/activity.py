"""What an operator reads in the log: one line per finished request and, while the engine
is busy, one line every `log_interval` seconds with its load and speed.

Lines carry their values as `fields` on the log record (see `runner.logs`), so the text
format shows them as `key=value` and the JSON format as keys. The request line has the same
token counts as the response's `timings` (`cache_n`, `prompt_n`, `predicted_n`). Prompt and
answer text are logged only with `log_text` (a debug setting): prompts are users' data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .job import EmbedJob, Job
from .stats import EngineStats
from .types import FinishEvent

requests_log = logging.getLogger("runner.requests")
engine_log = logging.getLogger("runner.engine.activity")

Detokenize = Callable[[Sequence[int]], str]


def request_fields(model: str, job: Job, event: FinishEvent) -> dict[str, Any]:
    """The request line's fields: who asked, where it ran, its token counts and speed."""
    t = event.timings
    ttft_ms = (job.t_gen_start - job.submitted_at) * 1e3 if job.t_gen_start else None
    return {
        "model": model,
        "dialect": job.request.dialect or "-",
        "slot": event.slot_id,
        "prompt_tokens": event.prompt_tokens,
        "cached_tokens": t.cache_n,
        "computed_tokens": t.prompt_n,
        "generated_tokens": t.predicted_n,
        "cache_source": t.cache_source,
        "drafts_kept": f"{t.draft_n_accepted}/{t.draft_n}",
        "ttft_ms": round(ttft_ms, 1) if ttft_ms is not None else None,
        "tokens_per_s": round(1e3 * t.predicted_n / t.predicted_ms, 1) if t.predicted_ms else 0.0,
        "finish_reason": event.finish_reason,
    }


class ActivityLog:
    """Writes the request and engine lines of one engine (called on the engine thread)."""

    def __init__(
        self,
        model: str = "",
        interval: float = 10.0,
        log_text: bool = False,
        detokenize: Detokenize | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.interval = interval  # seconds between engine lines while busy; <= 0: none
        self.log_text = log_text and detokenize is not None
        self._detokenize = detokenize
        self._clock = clock
        self._last_at = clock()
        self._was_idle = True
        self._counters: tuple[int, ...] = (0, 0, 0)  # generated, prompt, cached at `_last_at`
        self._prev: tuple[int, ...] = (0, 0, 0)

    def request_done(self, job: Job, event: FinishEvent) -> None:
        if not requests_log.isEnabledFor(logging.INFO):
            return
        fields = request_fields(self.model, job, event)
        if self.log_text and self._detokenize is not None:
            fields["prompt"] = self._detokenize(job.request.prompt_tokens)
            fields["answer"] = self._detokenize(job.output_tokens)
        requests_log.info("request done", extra={"fields": fields})

    def embeddings_done(self, job: EmbedJob, reason: str, ms: float) -> None:
        fields = {
            "model": self.model,
            "inputs": len(job.inputs),
            "prompt_tokens": job.n_tokens,
            "ms": round(ms, 1),
            "finish_reason": reason,
        }
        requests_log.info("embeddings done", extra={"fields": fields})

    def idle(self) -> None:
        """The engine has no work and sleeps until some arrives."""
        self._was_idle = True

    def tick(self, stats: EngineStats, running: Sequence[Job], waiting: int) -> None:
        """After a step: an engine line when `interval` has passed and there is work."""
        if self.interval <= 0:
            return
        now = self._clock()
        if self._was_idle:  # rates cover busy time only, not the idle stretch before it
            self._was_idle = False
            self._mark(now, stats, running)
            return
        elapsed = now - self._last_at
        if elapsed < self.interval or not (running or waiting):
            return
        generated, prompt, cached = self._mark(now, stats, running)
        new_prompt, new_cached = prompt - self._prev[1], cached - self._prev[2]
        hit_rate = new_cached / (new_cached + new_prompt) if new_cached + new_prompt else None
        fields = {
            "model": self.model,
            "running": len(running),
            "waiting": waiting,
            "generated_per_s": round((generated - self._prev[0]) / elapsed, 1),
            "prompt_per_s": round(new_prompt / elapsed, 1),
            "cache_hit_rate": round(hit_rate, 3) if hit_rate is not None else None,
        }
        engine_log.info("engine busy", extra={"fields": fields})

    def _mark(self, now: float, stats: EngineStats, running: Sequence[Job]) -> tuple[int, ...]:
        """Start a new window at `now`; keeps the last window's counters in `_prev`."""
        # Tokens of requests still running count as they are made, not only when they end.
        generated = stats.tokens_predicted_total + sum(
            j.timings.predicted_n for j in running if not j.finished
        )
        counters = (generated, stats.prompt_tokens_total, stats.cache_tokens_total)
        self._prev, self._counters = self._counters, counters
        self._last_at = now
        return counters
