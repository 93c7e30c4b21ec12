"""The operator's log, model-free: a request's line carries its timings' token counts and no
text unless asked; the engine line reports load and speed while busy; both formats."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest
from fake_executor import FakeExecutor

from runner.engine.activity import ActivityLog
from runner.engine.core import EngineCore
from runner.engine.job import Job, ThreadSink, collect, thread_events
from runner.engine.stats import EngineStats
from runner.engine.types import EngineConfig, GenerationRequest
from runner.logs import JsonFormatter, TextFormatter


@pytest.fixture
def core_with_log() -> Iterator[tuple[EngineCore, list[str]]]:
    detokenized: list[str] = []

    def detokenize(tokens: object) -> str:
        text = f"<{len(list(tokens))} tokens>"  # type: ignore[call-overload]
        detokenized.append(text)
        return text

    activity = ActivityLog("fake/model", interval=0, log_text=False, detokenize=detokenize)
    config = EngineConfig(slots=1, ctx_per_slot=256, prefill_block=16)
    core = EngineCore(config, FakeExecutor(), activity=activity)
    thread = threading.Thread(target=core.run, daemon=True)
    thread.start()
    yield core, detokenized
    core.stop(drain=False)
    thread.join(5)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "runner.requests"]


def test_request_line_has_the_timings_token_counts(
    core_with_log: tuple[EngineCore, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    core, detokenized = core_with_log
    caplog.set_level(logging.INFO, logger="runner.requests")
    sink = ThreadSink()
    prompt = list(range(100, 140))
    core.submit(Job(GenerationRequest(prompt, max_tokens=5, dialect="ollama"), sink))
    result = collect(thread_events(sink, timeout=10))
    [record] = request_lines(caplog)
    fields = record.fields  # type: ignore[attr-defined]
    timings = result.finish.timings
    assert fields["model"] == "fake/model" and fields["dialect"] == "ollama"
    assert fields["prompt_tokens"] == len(prompt)
    assert fields["cached_tokens"] == timings.cache_n
    assert fields["computed_tokens"] == timings.prompt_n == len(prompt)
    assert fields["generated_tokens"] == timings.predicted_n == 5
    assert fields["finish_reason"] == "length" and fields["slot"] == 0
    assert fields["cache_source"] == timings.cache_source
    assert fields["ttft_ms"] is not None and fields["ttft_ms"] >= 0
    # Without the debug setting, no text of the request is even made.
    assert "prompt" not in fields and "answer" not in fields and not detokenized


def test_log_text_adds_prompt_and_answer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner.requests")
    activity = ActivityLog("m", interval=0, log_text=True, detokenize=lambda t: f"{list(t)}")
    config = EngineConfig(slots=1, ctx_per_slot=256, prefill_block=16)
    core = EngineCore(config, FakeExecutor(), activity=activity)
    thread = threading.Thread(target=core.run, daemon=True)
    thread.start()
    try:
        sink = ThreadSink()
        core.submit(Job(GenerationRequest([5, 6, 7], max_tokens=2), sink))
        result = collect(thread_events(sink, timeout=10))
    finally:
        core.stop(drain=False)
        thread.join(5)
    fields = request_lines(caplog)[0].fields  # type: ignore[attr-defined]
    assert fields["prompt"] == "[5, 6, 7]" and fields["answer"] == str(result.tokens)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def busy_job(generated: int) -> Job:
    job = Job(GenerationRequest([1, 2, 3]), ThreadSink())
    job.timings.predicted_n = generated
    return job


def test_engine_line_every_interval_while_busy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner.engine.activity")
    clock = Clock()
    activity = ActivityLog("m", interval=10.0, clock=clock)
    stats = EngineStats()
    job = busy_job(0)
    activity.tick(stats, [job], waiting=2)  # the first step after idling starts a window
    clock.now, job.timings.predicted_n = 5.0, 50
    activity.tick(stats, [job], waiting=2)  # not yet: 5 s < 10 s
    assert not caplog.records
    clock.now, job.timings.predicted_n = 10.0, 200
    stats.prompt_tokens_total, stats.cache_tokens_total = 300, 100
    activity.tick(stats, [job], waiting=2)
    [record] = caplog.records
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["running"] == 1 and fields["waiting"] == 2
    assert fields["generated_per_s"] == 20.0  # 200 tokens in 10 s
    assert fields["prompt_per_s"] == 30.0 and fields["cache_hit_rate"] == 0.25
    # Idle time is not averaged in: after idling, the next window starts at the next step.
    activity.idle()
    clock.now = 1000.0
    activity.tick(stats, [job], waiting=0)
    assert len(caplog.records) == 1


def test_no_engine_line_when_idle_or_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner.engine.activity")
    clock = Clock()
    quiet = ActivityLog("m", interval=10.0, clock=clock)
    off = ActivityLog("m", interval=0, clock=clock)
    for log in (quiet, off):
        log.tick(EngineStats(), [], waiting=0)
    clock.now = 100.0
    quiet.tick(EngineStats(), [], waiting=0)  # nothing running or waiting
    off.tick(EngineStats(), [busy_job(5)], waiting=1)
    assert not caplog.records


def record_with(fields: dict[str, object]) -> logging.LogRecord:
    record = logging.LogRecord(
        "runner.requests", logging.INFO, __file__, 1, "request done", (), None
    )
    record.fields = fields
    return record


def test_text_format_shows_fields_as_pairs() -> None:
    line = TextFormatter().format(record_with({"model": "ai/gemma3", "ttft_ms": None, "s": "a b"}))
    assert line.endswith('request done model=ai/gemma3 ttft_ms=- s="a b"')
    assert "INFO runner.requests" in line


def test_json_format_is_one_object_per_line() -> None:
    line = JsonFormatter().format(record_with({"generated_tokens": 3, "model": "m"}))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "request done" and entry["level"] == "INFO"
    assert entry["generated_tokens"] == 3 and entry["logger"] == "runner.requests"
