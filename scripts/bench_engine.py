#!/usr/bin/env python3
"""Engine throughput without HTTP: aggregate output tokens/s at 1, 2, 4, 8 concurrent
requests on a slot pool, as ratios to one request, plus the share of each engine step spent
outside `llama_decode` (Python's cost).

    python scripts/bench_engine.py [--slots 4] [--levels 1,2,4,8] [--tokens 128]
        [--kv-unified] [--model PATH] [--json out.json]

Reference measured on the 2-core dev machine: llama.cpp's own server reaches ~75 tok/s for
one stream and ~1.35x that for 4 streams on the bundled model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

from runner.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from runner.store import BUNDLED_TAGS, ModelStore

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle to a child.",
    "List some tips for learning a new language.",
    "What makes a good cup of coffee?",
    "Describe a walk through a forest in autumn.",
    "Explain why the sky is blue.",
    "Tell me about the history of the printing press.",
]


def chat(text: str) -> str:
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


def run_level(engine: Engine, n: int, tokens: int) -> dict[str, float]:
    prompts = [engine.tokenize(chat(PROMPTS[i % len(PROMPTS)])) for i in range(n)]
    results: list = [None] * n
    stats = engine.stats
    decode0, step0 = stats.decode_seconds_total, stats.step_seconds_total

    def worker(i: int) -> None:
        request = GenerationRequest(
            prompts[i],
            SamplingParams(temperature=0.0),
            max_tokens=tokens,
            ignore_eos=True,
            cache_prompt=False,
        )
        results[i] = engine.generate(request)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    generated = sum(r.timings.predicted_n for r in results)
    decode = stats.decode_seconds_total - decode0
    step = stats.step_seconds_total - step0
    return {
        "concurrency": n,
        "output_tokens": generated,
        "wall_s": wall,
        "aggregate_tok_s": generated / wall,
        "per_stream_tok_s": sum(r.timings.to_dict()["predicted_per_second"] for r in results) / n,
        "python_share_of_step": (step - decode) / step if step else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", help="GGUF path (default: the bundled Gemma 3 270M)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kv-unified", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per level (best is kept)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    path = args.model
    if path is None:
        models = os.environ.get("RUNNER_MODELS_DIR") or Path.home() / ".cache/runner/models"
        path = ModelStore(models).get(BUNDLED_TAGS[0]).path
    config = EngineConfig(
        slots=args.slots, ctx_per_slot=1024, threads=args.threads, kv_unified=args.kv_unified
    )
    engine = Engine(path, config, name="bench")
    try:
        run_level(engine, 1, 8)  # warm-up
        rows = []
        for n in (int(x) for x in args.levels.split(",")):
            best = max(
                (run_level(engine, n, args.tokens) for _ in range(args.repeat)),
                key=lambda r: r["aggregate_tok_s"],
            )
            rows.append(best)
    finally:
        engine.close()
    base = rows[0]["aggregate_tok_s"]
    print(f"{'conc':>5} {'agg tok/s':>10} {'x single':>9} {'per-stream':>11} {'python %':>9}")
    for r in rows:
        r["ratio_to_single"] = r["aggregate_tok_s"] / base
        print(
            f"{r['concurrency']:>5} {r['aggregate_tok_s']:>10.1f} {r['ratio_to_single']:>9.2f}"
            f" {r['per_stream_tok_s']:>11.1f} {100 * r['python_share_of_step']:>8.1f}%"
        )
    if args.json:
        report = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "model": str(path),
            "config": {"slots": args.slots, "kv_unified": args.kv_unified, "tokens": args.tokens},
            "results": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
