#!/usr/bin/env python3
"""More users than slots: do prefixes survive? (issue 6's thrash workload)

N users with distinct long system prompts take round-robin turns of a multi-turn chat on a
server with fewer slots than users. Reports, per configuration, the prompt tokens computed
against the unique-token lower bound (each distinct token computed once), and the
time-to-first-token of turns whose prefix was cached against cold first turns.

By default it starts two runner servers on the bundled model, one with the RAM/disk prompt
cache and one with slot-only caching (llama-server's behaviour before --cache-ram), and runs
the same workload against both:

    python scripts/bench_thrash.py [--users 8] [--slots 2] [--rounds 3] [--json out.json]
    python scripts/bench_thrash.py --url http://127.0.0.1:12434   # an already running server
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MODEL = "ai/gemma3"


def system_prompt(user: int, facts: int) -> str:
    body = " ".join(
        f"Fact {i}: item {user}-{i} is filed under drawer {i % 7}." for i in range(facts)
    )
    return f"You are archive assistant number {user}. {body}"


def stream_turn(
    client: httpx.Client,
    messages: list[dict],
    max_tokens: int,
    path: str = "/engines/llama.cpp/v1/chat/completions",
) -> dict:
    """One greedy streamed chat turn: its text, time to first token (None if no text came),
    total time, `timings`, `usage` and the replica that answered (clusters say so)."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = None
    text, timings, usage = [], {}, {}
    with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        replica = response.headers.get("x-runner-replica", "?")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            timings = chunk.get("timings") or timings
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content:
                    ttft = ttft if ttft is not None else time.perf_counter() - started
                    text.append(content)
    return {
        "text": "".join(text),
        "ttft_s": ttft,
        "elapsed_s": time.perf_counter() - started,
        "timings": timings,
        "usage": usage,
        "replica": replica,
    }


def run_workload(url: str, users: int, rounds: int, facts: int, max_tokens: int) -> dict:
    conversations = [
        [{"role": "system", "content": system_prompt(u, facts)}, {"role": "user", "content": "Hi."}]
        for u in range(users)
    ]
    turns = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for r in range(rounds):
            for u, messages in enumerate(conversations):
                out = stream_turn(client, messages, max_tokens)
                t = out["timings"]
                turns.append(
                    {
                        "round": r,
                        "user": u,
                        "prompt_tokens": out["usage"].get("prompt_tokens", 0),
                        "cache_n": t.get("cache_n", 0),
                        "prompt_n": t.get("prompt_n", 0),
                        "cache_source": t.get("cache_source", "?"),
                        "ttft_s": out["ttft_s"] or 0.0,
                    }
                )
                messages += [
                    {"role": "assistant", "content": out["text"]},
                    {"role": "user", "content": f"Another question, number {r}."},
                ]
    # Each user's last prompt contains every earlier turn, so computing those tokens once
    # each is the least any cache could do.
    last = {t["user"]: t["prompt_tokens"] for t in turns}
    cold = [t["ttft_s"] for t in turns if t["round"] == 0]
    warm = [t["ttft_s"] for t in turns if t["round"] > 0]
    return {
        "computed_tokens": sum(t["prompt_n"] for t in turns),
        "reused_tokens": sum(t["cache_n"] for t in turns),
        "unique_token_lower_bound": sum(last.values()),
        "ttft_cold_median_s": statistics.median(cold),
        "ttft_later_rounds_median_s": statistics.median(warm) if warm else None,
        "later_rounds_min_cache_n": min((t["cache_n"] for t in turns if t["round"] > 0), default=0),
        "turns": turns,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_runner(slots: int, extra: list[str], cache_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RUNNER_CACHE_DIR": cache_dir}
    cmd = [sys.executable, "-m", "runner", "serve", "--port", str(port), "--slots", str(slots)]
    proc = subprocess.Popen(
        [*cmd, "--ctx-size", "4096", "--model", MODEL, *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("runner serve exited during startup")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("runner serve did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="benchmark this server only")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--facts", type=int, default=40, help="system prompt size (~13 tokens each)"
    )
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    configs = (
        {"given": []}
        if args.url
        else {"tiered cache": [], "slots only": ["--cache-ram", "0", "--no-persist"]}
    )
    report: dict = {"settings": vars(args) | {"json": str(args.json)}, "results": {}}
    for name, extra in configs.items():
        with tempfile.TemporaryDirectory() as cache_dir:
            proc = None
            url = args.url
            if url is None:
                proc, url = start_runner(args.slots, extra, cache_dir)
            try:
                result = run_workload(url, args.users, args.rounds, args.facts, args.max_tokens)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(60)
        report["results"][name] = result
        bound = result["unique_token_lower_bound"]
        print(
            f"{name:>13}: computed {result['computed_tokens']:>6} prompt tokens "
            f"({result['computed_tokens'] / bound:.2f}x the {bound}-token lower bound), "
            f"TTFT cold {1e3 * result['ttft_cold_median_s']:.0f} ms, later rounds "
            f"{1e3 * (result['ttft_later_rounds_median_s'] or 0):.0f} ms, "
            f"min cache_n after round 1: {result['later_rounds_min_cache_n']}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
