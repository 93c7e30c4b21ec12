"""KV cache types side by side: q8_0 (or any) K and V against f16 on the same model.

For each type pair, in-process on the bundled model (or `--model FILE`):

- prompt tokens per MiB of prompt cache: the saved sequence state of a computed prompt (what
  the RAM and disk tiers and slot files hold), divided into its tokens;
- prefill and decode speed: tokens/s computing an uncached prompt, and generating with
  `ignore_eos` (the best of `--repeats`);
- slots x context in one memory budget: the tokens of context (slots x ctx per slot) the
  loader's memory estimate fits in `--budget` after the weights and compute buffers.

    python scripts/bench_kv_types.py [--types q8_0,q4_0] [--prompt 1024] [--out DIR]

Writes JSON (figures per type and ratios against f16) under `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from runner.config import Settings, parse_size
from runner.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from runner.memory import estimate
from runner.store import BUNDLED_TAGS, ModelStore
from runner.store.gguf_meta import read_metadata

GREEDY = SamplingParams(temperature=0.0)
MIB = 1 << 20


def prompt_tokens(engine: Engine, n: int) -> list[int]:
    text = " ".join(
        f"Item {i}: the ferry leaves the harbour at dawn with apples." for i in range(n)
    )
    return engine.tokenize(text)[:n]


def timed(engine: Engine, request: GenerationRequest) -> Any:
    done = engine.generate(request)
    assert done.finish.finish_reason in ("length", "stop"), done.finish
    return done.finish.timings


def state_bytes(engine: Engine, n_tokens: int) -> int:
    """Bytes of the saved state of slot 0 (holding a computed prompt of `n_tokens`)."""
    future = engine.call_with_scheduler(lambda sched: len(sched.executor.seq_state(0)))
    return future.result(timeout=60)


def fit_tokens(meta: Any, size: int, config: EngineConfig, budget: int) -> int:
    """Context tokens (all slots) the memory estimate fits in `budget`."""
    one = estimate(meta, size, dataclasses.replace(config, slots=1, ctx_per_slot=1024))
    two = estimate(meta, size, dataclasses.replace(config, slots=1, ctx_per_slot=2048))
    per_token = (two.kv_cache - one.kv_cache) / 1024
    fixed = one.total - one.kv_cache
    return int((budget - fixed) / per_token) if budget > fixed else 0


def load(path: Path, k: str, v: str, args: argparse.Namespace) -> Engine:
    config = EngineConfig(
        slots=1,
        ctx_per_slot=args.prompt + args.decode + 64,
        threads=args.threads,
        spec_draft_max=0,
        cache_type_k=k,
        cache_type_v=v,
    )
    return Engine(path, config)


def measure(engines: list[Engine], path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Repeats interleaved across the types, best of each: a busy machine slows them alike."""
    prompt = prompt_tokens(engines[0], args.prompt)
    prefill = [0.0] * len(engines)
    decode = [0.0] * len(engines)
    for _ in range(args.repeats):
        for i, engine in enumerate(engines):
            t = timed(engine, GenerationRequest(prompt, GREEDY, max_tokens=1, cache_prompt=False))
            prefill[i] = max(prefill[i], t.prompt_n / (t.prompt_ms / 1e3))
            request = GenerationRequest(prompt, GREEDY, max_tokens=args.decode, ignore_eos=True)
            t = timed(engine, request)
            decode[i] = max(decode[i], (t.predicted_n - 1) / (t.predicted_ms / 1e3))
    meta = read_metadata(path)
    budget = parse_size(args.budget)
    held = len(prompt) + args.decode  # the slot holds the prompt and the answer
    rows = []
    for i, engine in enumerate(engines):
        size = state_bytes(engine, held)
        rows.append(
            {
                "cache_type_k": engine.config.cache_type_k,
                "cache_type_v": engine.config.cache_type_v,
                "state_bytes": size,
                "state_tokens": held,
                "prompt_tokens_per_mib": held / (size / MIB),
                "prefill_tokens_per_s": prefill[i],
                "decode_tokens_per_s": decode[i],
                "context_tokens_in_budget": fit_tokens(
                    meta, path.stat().st_size, engine.config, budget
                ),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled model)")
    parser.add_argument("--types", default="q8_0", help="comma list of types to set K and V to")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", default="2GiB", help="memory budget for the fit figure")
    parser.add_argument("--out", type=Path, default=Path("scripts/results/kv-types"))
    args = parser.parse_args()
    path = args.model or ModelStore(Settings().models_dir).get(BUNDLED_TAGS[0]).path
    types = ["f16"] + [t for t in args.types.split(",") if t]
    engines = [load(path, t, t, args) for t in types]
    try:
        rows = measure(engines, path, args)
    finally:
        for engine in engines:
            engine.close()
    base = rows[0]
    for row in rows[1:]:
        row["vs_f16"] = {
            "prompt_tokens_per_mib": row["prompt_tokens_per_mib"] / base["prompt_tokens_per_mib"],
            "prefill_speed": row["prefill_tokens_per_s"] / base["prefill_tokens_per_s"],
            "decode_speed": row["decode_tokens_per_s"] / base["decode_tokens_per_s"],
            "context_tokens_in_budget": row["context_tokens_in_budget"]
            / max(base["context_tokens_in_budget"], 1),
        }
    for row in rows:
        print(json.dumps(row))
    result = {
        "model": path.name,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared, busy)",
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "out")},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out / f"kv-types-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
