"""The three workloads. Each takes a `BenchClient`, a `Plan` and a progress callback, and
returns `{"summary": {flat numbers}, ...details}`; `summary` feeds the terminal table and
the side-by-side ratios when two servers are compared.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import prompts
from .client import BenchClient, BenchError, Result, percentile

Tick = Callable[[int], object]

# Counter names in runner's /metrics (runner.api.llama_server.metrics); llama-server: n_decode only.
DECODE_SECONDS = "runner:decode_seconds_total"
SAMPLE_SECONDS = "runner:sample_seconds_total"
STEP_SECONDS = "runner:step_seconds_total"
SCHEDULE_SECONDS = "runner:schedule_seconds_total"
UPDATE_SECONDS = "runner:update_seconds_total"
EMIT_SECONDS = "runner:emit_seconds_total"
STEPS = "runner:steps_total"
UBATCHES = "runner:ubatches_total"
N_DECODE = "llamacpp:n_decode_total"


@dataclass
class Plan:
    """Workload settings (recorded verbatim in the JSON report)."""

    system_tokens: int = 1000  # cache, chat: shared system prompt length
    repeats: int = 3  # cache: cold/cached pairs
    levels: tuple[int, ...] = (1, 2, 4, 8, 16)  # concurrency: streams at once
    rounds: int = 1  # concurrency: batches per level
    prompt_tokens: int = 128  # concurrency: prompt length
    max_tokens: int | None = None  # output tokens (default per workload)
    ignore_eos: bool = True  # concurrency: fixed output length
    raw: bool = False  # concurrency: raw /completions (the same tokens on any server)
    users: int = 4  # chat
    turns: int = 3  # chat
    warmup: bool = True

    def tokens(self, workload: str) -> int:
        return self.max_tokens or {"cache": 8, "concurrency": 64, "chat": 32, "spec": 200}[workload]

    def requests(self, workload: str) -> int:
        """How many timed requests a workload makes (progress bar total)."""
        if workload == "cache":
            return 2 * self.repeats
        if workload == "concurrency":
            return sum(self.levels) * self.rounds
        if workload == "spec":
            return 2 * self.repeats
        return self.users * self.turns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def prepare(client: BenchClient, plan: Plan, target_tokens: int) -> tuple[int, int | None]:
    """Warm the server up (loads the model) and size filler text: (words, measured tokens)."""
    if plan.warmup:
        warm = await client.chat([{"role": "user", "content": "Hello"}], 2)
        if not warm.ok:
            raise BenchError(f"warm-up request failed: {warm.error}")
    probe = max(50, target_tokens)
    measured = await client.count_tokens(prompts.filler(probe))
    words = prompts.scale_words(probe, target_tokens, measured)
    return words, measured and round(measured * words / probe)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _require(result: Result, what: str) -> Result:
    if not result.ok:
        raise BenchError(f"{what} failed: {result.error}")
    return result


# ----- cache ---------------------------------------------------------------------------------


async def run_cache(client: BenchClient, plan: Plan, tick: Tick) -> dict[str, Any]:
    """Cold long system prompt (nonce first: nothing cached can match) vs the same system
    prompt with a new question; `prompt_ms`, `cache_n` and `prompt_n` come from `timings`."""
    words, _ = await prepare(client, plan, plan.system_tokens)
    max_tokens = plan.tokens("cache")
    pairs = []
    for r in range(plan.repeats):
        system = prompts.system_prompt(words, prompts.nonce(), seed=r)
        runs = {}
        for i, kind in enumerate(("cold", "cached")):
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": prompts.question(2 * r + i)},
            ]
            result = await client.chat(messages, max_tokens)
            runs[kind] = _require(result, f"{kind} request").figures()
            tick(1)
        speedup = _ratio(runs["cold"]["prompt_ms"], runs["cached"]["prompt_ms"])
        pairs.append({**runs, "prompt_speedup": speedup})

    def med(kind: str, key: str) -> float | None:
        return _median([p[kind][key] for p in pairs])

    summary = {
        "prompt_tokens": med("cold", "prompt_tokens"),
        "cold_prompt_ms": med("cold", "prompt_ms"),
        "cached_prompt_ms": med("cached", "prompt_ms"),
        "prompt_speedup": _ratio(med("cold", "prompt_ms"), med("cached", "prompt_ms")),
        "cold_cache_n": med("cold", "cache_n"),
        "cold_prompt_n": med("cold", "prompt_n"),
        "cached_cache_n": med("cached", "cache_n"),
        "cached_prompt_n": med("cached", "prompt_n"),
        "cold_ttft_ms": med("cold", "ttft_ms"),
        "cached_ttft_ms": med("cached", "ttft_ms"),
        "ttft_speedup": _ratio(med("cold", "ttft_ms"), med("cached", "ttft_ms")),
    }
    return {"summary": summary, "pairs": pairs}


# ----- concurrency ---------------------------------------------------------------------------


def engine_profile(
    before: dict[str, float] | None, after: dict[str, float] | None, wall_s: float
) -> dict[str, float | None] | None:
    """Engine step time split from `/metrics` deltas. `outside_decode_share` is the share of
    engine step wall time not spent in `llama_decode` (batch filling, sampling, detokenizing,
    stop checks, handing tokens over): needs runner's decode and step second counters."""
    if not before or not after:
        return None

    def delta(name: str) -> float | None:
        return after[name] - before.get(name, 0.0) if name in after else None

    decode, step, n_decode = delta(DECODE_SECONDS), delta(STEP_SECONDS), delta(N_DECODE)
    sample, steps, ubatches = delta(SAMPLE_SECONDS), delta(STEPS), delta(UBATCHES)

    def per_step_ms(seconds: float | None) -> float | None:
        return 1e3 * seconds / steps if seconds is not None and steps else None

    outside = step - decode - (sample or 0.0) if step is not None and decode is not None else None
    return {
        "n_decode": n_decode,
        "decode_s": decode,
        "step_s": step,
        "decode_share_of_wall": _ratio(decode, wall_s),
        "outside_decode_share": 1.0 - decode / step if decode is not None and step else None,
        "steps": steps,
        "ubatches_per_step": _ratio(ubatches, steps),
        # Engine time per step outside llama_decode and llama.cpp's samplers, and its parts.
        "outside_ms_per_step": per_step_ms(outside),
        "sample_ms_per_step": per_step_ms(sample),
        "schedule_ms_per_step": per_step_ms(delta(SCHEDULE_SECONDS)),
        "update_ms_per_step": per_step_ms(delta(UPDATE_SECONDS)),
        "emit_ms_per_step": per_step_ms(delta(EMIT_SECONDS)),
    }


async def run_concurrency(client: BenchClient, plan: Plan, tick: Tick) -> dict[str, Any]:
    """`levels` concurrent streams of a fixed prompt length and a fixed output length
    (`ignore_eos`); each prompt starts with a nonce so none reuses another's cache."""
    words, measured = await prepare(client, plan, plan.prompt_tokens)
    max_tokens = plan.tokens("concurrency")

    async def one(i: int) -> Result:
        text = f"[{prompts.nonce()}] " + prompts.filler(words, seed=i) + "\nContinue the text."
        if plan.raw:
            result = await client.completion(text, max_tokens, ignore_eos=plan.ignore_eos)
        else:
            result = await client.chat(
                [{"role": "user", "content": text}], max_tokens, ignore_eos=plan.ignore_eos
            )
        tick(1)
        return result

    levels = []
    for level in plan.levels:
        results: list[Result] = []
        wall = 0.0
        before = await client.metrics(client.model)
        for _ in range(plan.rounds):
            t0 = time.perf_counter()
            results += await asyncio.gather(*(one(i) for i in range(level)))
            wall += time.perf_counter() - t0
        after = await client.metrics(client.model)
        levels.append(_level_figures(level, results, wall, engine_profile(before, after, wall)))
    summary: dict[str, Any] = {"prompt_tokens": measured}
    for row in levels:
        c = row["concurrency"]
        summary[f"tps@{c}"] = row["throughput_tps"]
        summary[f"ttft_p50_ms@{c}"] = row["ttft_p50_ms"]
        summary[f"stream_tps@{c}"] = row["stream_tps_mean"]
        engine = row["engine"] or {}
        for key in ("outside_decode_share", "ubatches_per_step", "outside_ms_per_step"):
            if engine.get(key) is not None:
                summary[f"{key}@{c}"] = engine[key]
    return {"summary": summary, "levels": levels}


def _level_figures(
    level: int, results: list[Result], wall_s: float, engine: dict[str, Any] | None
) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    streams = [r.stream_tps for r in ok if r.stream_tps is not None]
    server_tps = [r.timings.get("predicted_per_second") for r in ok]
    return {
        "concurrency": level,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r.error or "" for r in results if not r.ok})[:3],
        "wall_s": wall_s,
        "output_tokens": out_tokens,
        "prompt_tokens_mean": _median([r.prompt_tokens for r in ok]),
        "throughput_tps": out_tokens / wall_s if wall_s > 0 else None,
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p95_ms": percentile(ttfts, 95),
        "stream_tps_mean": statistics.fmean(streams) if streams else None,
        "stream_tps_min": min(streams) if streams else None,
        "server_predicted_tps_mean": _median([v for v in server_tps if v]),
        "engine": engine,
    }


# ----- chat ----------------------------------------------------------------------------------


async def run_chat(client: BenchClient, plan: Plan, tick: Tick) -> dict[str, Any]:
    """`users` conversations of `turns` turns sharing one system prompt, each turn sent by
    all users at once; per turn, prompt tokens computed (`prompt_n`) vs reused (`cache_n`)."""
    words, _ = await prepare(client, plan, plan.system_tokens)
    max_tokens = plan.tokens("chat")
    system = prompts.system_prompt(words, prompts.nonce())
    convs = [[{"role": "system", "content": system}] for _ in range(plan.users)]

    async def say(u: int, t: int) -> Result:
        q = prompts.question(u * plan.turns + t)
        convs[u].append({"role": "user", "content": f"(user {u + 1}) {q}"})
        result = await client.chat(list(convs[u]), max_tokens)
        convs[u].append({"role": "assistant", "content": result.text})
        tick(1)
        return result

    turns = []
    for t in range(plan.turns):
        results = await asyncio.gather(*(say(u, t) for u in range(plan.users)))
        ok = [r for r in results if r.ok]
        computed = sum(int(r.timings.get("prompt_n") or 0) for r in ok)
        reused = sum(int(r.timings.get("cache_n") or 0) for r in ok)
        turns.append(
            {
                "turn": t + 1,
                "requests": len(results),
                "errors": len(results) - len(ok),
                "error_samples": sorted({r.error or "" for r in results if not r.ok})[:3],
                "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
                "computed": computed,
                "reused": reused,
                "reused_share": _ratio(reused, computed + reused),
                "prompt_ms_mean": _median([r.timings.get("prompt_ms") for r in ok]),
                "ttft_p50_ms": percentile([r.ttft_ms for r in ok if r.ttft_ms is not None], 50),
            }
        )
    computed = sum(t["computed"] for t in turns)
    reused = sum(t["reused"] for t in turns)
    summary: dict[str, Any] = {
        "computed": computed,
        "reused": reused,
        "reused_share": _ratio(reused, computed + reused),
        "errors": sum(t["errors"] for t in turns),
    }
    for row in turns:
        summary[f"reused_share@turn{row['turn']}"] = row["reused_share"]
        summary[f"ttft_p50_ms@turn{row['turn']}"] = row["ttft_p50_ms"]
    return {"summary": summary, "turns": turns}


def _run_spec(client: BenchClient, plan: Plan, tick: Tick) -> Any:
    from .spec import run_spec

    return run_spec(client, plan, tick)


WORKLOADS = {
    "cache": run_cache,
    "concurrency": run_concurrency,
    "chat": run_chat,
    "spec": _run_spec,
}
