#!/usr/bin/env python3
"""The engine's own time per step, without a model: N streams on the test suite's fake
executor (tests/fake_executor.py, whose "model" costs microseconds), with prompt lookup on and
repetitive text, so what is timed is runner's scheduling, drafting, output handling and event
hand-off (the step minus `llama_decode` and the samplers on a real model).

    python scripts/bench_step_overhead.py [--levels 1,4,16,32] [--tokens 64] [--draft-max 48]
        [--json PATH]

The fake's clock does not move, so adaptive drafting always drafts (48 guesses a step when
they land): with lookup on, each step emits many tokens per stream.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_executor import FakeExecutor  # noqa: E402

from runner.engine.core import EngineCore  # noqa: E402
from runner.engine.job import Job, ThreadSink, collect, thread_events  # noqa: E402
from runner.engine.types import EngineConfig, GenerationRequest  # noqa: E402

PERIOD = 40


def repeats(seq: list[int]) -> int:
    """A "model" that repeats its text PERIOD tokens back: prompt lookup's best case."""
    return seq[-PERIOD]


def run_level(streams: int, tokens: int, draft_max: int) -> dict[str, float]:
    config = EngineConfig(
        slots=max(streams, 1), ctx_per_slot=4096, prefill_block=16, spec_draft_max=draft_max
    )
    executor = FakeExecutor()
    executor.rule = repeats
    core = EngineCore(config, executor)
    thread = threading.Thread(target=core.run, daemon=True)
    thread.start()
    executor.gate = threading.Event()
    sinks = []
    for i in range(streams):
        prompt = [1000 * (i + 1) + k for k in range(PERIOD)] * 4
        sink = ThreadSink()
        core.submit(Job(GenerationRequest(prompt, max_tokens=tokens, ignore_eos=True), sink))
        sinks.append(sink)
    while core.n_busy + core.n_waiting < streams:
        time.sleep(0.001)
    executor.gate.set()
    started = time.perf_counter()
    results = [collect(thread_events(s, timeout=600)) for s in sinks]
    wall = time.perf_counter() - started
    core.stop(drain=False)
    thread.join(10)
    s = core.stats
    steps = max(s.steps_total, 1)
    return {
        "streams": streams,
        "steps": s.steps_total,
        "tokens": sum(len(r.tokens) for r in results),
        "drafted": sum(r.timings.draft_n for r in results),
        "accepted": sum(r.timings.draft_n_accepted for r in results),
        "ubatches_per_step": s.ubatches_total / steps,
        "step_ms": 1e3 * s.step_seconds_total / steps,
        "schedule_ms": 1e3 * s.schedule_seconds_total / steps,
        "update_ms": 1e3 * s.update_seconds_total / steps,
        "emit_ms": 1e3 * s.emit_seconds_total / steps,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--draft-max", type=int, default=48, help="0: no prompt lookup")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [run_level(int(n), args.tokens, args.draft_max) for n in args.levels.split(",")]
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
