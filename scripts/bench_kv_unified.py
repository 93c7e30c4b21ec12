#!/usr/bin/env python3
"""One unified KV buffer against a KV stream per slot, on the bundled model, in one process:

- throughput: N concurrent greedy streams (staggered prompt lengths, fixed output with
  ignore_eos), aggregate tokens/s, and the engine's ubatches and milliseconds per step;
- exactness (partition.py's contract): the same prompt answered uncached and cached while
  other slots hold other text must give the same greedy tokens.

    python scripts/bench_kv_unified.py [--slots 8] [--levels 1,4,8] [--tokens 32]
        [--threads N] [--json scripts/results/kv-unified.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

from runner.config import Settings
from runner.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from runner.store import BUNDLED_TAGS, ModelStore

TOPICS = ["rivers", "mountains", "trains", "gardens", "stars", "ships", "bridges", "forests"]


def prompt(i: int, words: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    body = " ".join(f"Fact {k} about {topic}: item {i}-{k} matters." for k in range(words))
    return f"Notes on {topic}. {body}\nSummary of the notes on {topic}:"


def greedy(engine: Engine, text: str, tokens: int, **kw) -> list[int]:
    request = GenerationRequest(
        engine.tokenize(text),
        SamplingParams(temperature=0.0),
        max_tokens=tokens,
        ignore_eos=True,
        **kw,
    )
    return engine.generate(request, timeout=600).tokens


def throughput(engine: Engine, streams: int, tokens: int) -> dict[str, float]:
    stats = engine.stats
    before = (stats.steps_total, stats.ubatches_total, stats.step_seconds_total)
    before_dec = stats.decode_seconds_total + stats.sample_seconds_total
    threads = [
        threading.Thread(target=greedy, args=(engine, prompt(100 + i, 4 + 3 * i), tokens))
        for i in range(streams)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    steps = stats.steps_total - before[0]
    outside = (stats.step_seconds_total - before[2]) - (
        stats.decode_seconds_total + stats.sample_seconds_total - before_dec
    )
    return {
        "streams": streams,
        "tokens_per_s": streams * tokens / wall,
        "ubatches_per_step": (stats.ubatches_total - before[1]) / steps if steps else 0.0,
        "outside_ms_per_step": 1e3 * outside / steps if steps else 0.0,
    }


def exactness(engine: Engine, slots: int, tokens: int) -> dict[str, int]:
    """Per prompt: fill the other slots with other text, then compare uncached and cached."""
    same = differ = 0
    for i in range(3):
        others = [
            threading.Thread(target=greedy, args=(engine, prompt(200 + 10 * i + k, 8), 4))
            for k in range(slots - 1)
        ]
        for t in others:
            t.start()
        for t in others:
            t.join()
        text = prompt(300 + i, 25)
        uncached = greedy(engine, text, tokens, cache_prompt=False)
        greedy(engine, text, 1)  # leaves the prompt in a slot
        cached = greedy(engine, text, tokens)
        same += cached == uncached
        differ += cached != uncached
    return {"same": same, "differ": differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    path = ModelStore(Settings().models_dir).get(BUNDLED_TAGS[0]).path
    out: dict[str, object] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "settings": vars(args),
    }
    for unified in (False, True):
        config = EngineConfig(
            slots=args.slots, ctx_per_slot=1024, threads=args.threads, kv_unified=unified
        )
        engine = Engine(path, config, name=f"kv-unified-{unified}")
        try:
            greedy(engine, prompt(0, 5), 4)  # warm up
            levels = [int(x) for x in args.levels.split(",")]
            row = {
                "throughput": [throughput(engine, n, args.tokens) for n in levels],
                "exactness": exactness(engine, args.slots, args.tokens),
            }
        finally:
            engine.close()
        out["unified" if unified else "per_slot"] = row
        print(("kv_unified=true " if unified else "kv_unified=false"), json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
