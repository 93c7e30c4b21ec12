#!/usr/bin/env python3
"""runner on Ray Serve: the thrash and chat workloads across N replicas, per request router.

Starts a local Ray cluster (or joins `--address`), deploys `--replicas` replicas of the
bundled model behind the front door, and for each router (runner's cache-following one,
Ray's default power-of-two, Ray Serve LLM's PrefixCacheAffinityRouter) redeploys with an
empty prompt cache and runs:

- thrash: `--users` users with distinct long system prompts take round-robin turns (one
  request at a time) of a multi-turn chat, more users than the cluster has slots;
- chat: the same kind of users all talking at once (each user's turns back to back), so
  load and queueing matter too.

Reported per router and workload: prompt tokens computed against the unique-token lower
bound (each user's last prompt holds all its earlier ones: computing those once each is the
least any cache could do), TTFT p50/p95, and balance (requests per replica).

    python scripts/bench_cluster.py [--replicas 2] [--users 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from bench_thrash import MODEL, stream_turn, system_prompt  # the same users and turns

ROUTERS = ("runner", "pow2", "prefix")


def turn(client: httpx.Client, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    out = stream_turn(client, messages, max_tokens, path="/v1/chat/completions")
    return {
        "text": out["text"],
        "ttft_s": out["ttft_s"] if out["ttft_s"] is not None else out["elapsed_s"],
        "prompt_tokens": out["usage"].get("prompt_tokens", 0),
        "cache_n": out["timings"].get("cache_n", 0),
        "prompt_n": out["timings"].get("prompt_n", 0),
        "replica": out["replica"],
    }


def conversation(
    url: str, user: int, turns: int, facts: int, max_tokens: int, out: list[dict[str, Any]]
) -> None:
    messages = [
        {"role": "system", "content": system_prompt(user, facts)},
        {"role": "user", "content": "Hi."},
    ]
    with httpx.Client(base_url=url, timeout=900) as client:
        for t in range(turns):
            result = turn(client, messages, max_tokens)
            out.append({"round": t, "user": user, **result})
            messages += [
                {"role": "assistant", "content": result["text"]},
                {"role": "user", "content": f"Another question, number {t}."},
            ]


def thrash(url: str, users: int, rounds: int, facts: int, max_tokens: int) -> list[dict]:
    """Round-robin turns, one request at a time."""
    convs = [
        [
            {"role": "system", "content": system_prompt(u, facts)},
            {"role": "user", "content": "Hi."},
        ]
        for u in range(users)
    ]
    out = []
    with httpx.Client(base_url=url, timeout=900) as client:
        for r in range(rounds):
            for u, messages in enumerate(convs):
                result = turn(client, messages, max_tokens)
                out.append({"round": r, "user": u, **result})
                messages += [
                    {"role": "assistant", "content": result["text"]},
                    {"role": "user", "content": f"Another question, number {r}."},
                ]
    return out


def chat(url: str, users: int, rounds: int, facts: int, max_tokens: int) -> list[dict]:
    """Every user at once, each one's turns back to back."""
    out: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=conversation, args=(url, u, rounds, facts, max_tokens, out))
        for u in range(users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    last: dict[int, int] = {}
    for t in sorted(turns, key=lambda t: t["round"]):
        last[t["user"]] = t["prompt_tokens"]
    bound = sum(last.values())
    computed = sum(t["prompt_n"] for t in turns)
    ttfts = sorted(1e3 * t["ttft_s"] for t in turns)
    per_replica = Counter(t["replica"] for t in turns)
    later = [t for t in turns if t["round"] > 0]
    return {
        "requests": len(turns),
        "computed_tokens": computed,
        "reused_tokens": sum(t["cache_n"] for t in turns),
        "unique_token_lower_bound": bound,
        "computed_vs_bound": round(computed / bound, 3) if bound else None,
        "ttft_p50_ms": round(percentile(ttfts, 50), 1),
        "ttft_p95_ms": round(percentile(ttfts, 95), 1),
        "later_rounds_mean_reuse": round(
            statistics.mean(t["cache_n"] / t["prompt_tokens"] for t in later), 3
        )
        if later
        else None,
        "requests_per_replica": sorted(per_replica.values(), reverse=True),
        "turns": turns,
    }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--address", help="Ray cluster to join (default: start one here)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="per replica")
    parser.add_argument("--slots", type=int, default=2, help="per replica")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--facts", type=int, default=30, help="system prompt size (~13 tokens each)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--routers", default=",".join(ROUTERS))
    parser.add_argument("--workloads", default="thrash,chat")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from runner.cluster.deploy import APP_NAME, REPLICAS_APP, ClusterOptions, build_apps
    from runner.config import Settings

    src = str(Path(__file__).resolve().parents[1] / "src")
    if args.address:
        ray.init(address=args.address, logging_level="warning")
    else:
        ray.init(
            num_cpus=args.replicas * args.threads + 1,
            include_dashboard=False,
            logging_level="warning",
            runtime_env={"env_vars": {"PYTHONPATH": src, "RAY_USAGE_STATS_ENABLED": "0"}},
        )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    workloads = {"thrash": thrash, "chat": chat}
    try:
        with tempfile.TemporaryDirectory() as root:
            for router in args.routers.split(","):
                for name in args.workloads.split(","):
                    settings = Settings(
                        model=[MODEL],
                        threads=args.threads,
                        slots=args.slots,
                        ctx_size=2048,
                        cache_dir=Path(root) / f"{router}-{name}",
                    )
                    options = ClusterOptions(replicas=args.replicas, router=router)
                    replicas, front = build_apps(settings, options)
                    serve.run(replicas, name=REPLICAS_APP, route_prefix=None)
                    serve.run(front, name=APP_NAME, route_prefix="/")
                    turns = workloads[name](
                        url, args.users, args.rounds, args.facts, args.max_tokens
                    )
                    result = summarize(turns)
                    report.setdefault(router, {})[name] = result
                    print(
                        f"{router:>6} {name:>6}: computed {result['computed_tokens']:>6} "
                        f"({result['computed_vs_bound']:.2f}x the "
                        f"{result['unique_token_lower_bound']}-token bound), TTFT p50 "
                        f"{result['ttft_p50_ms']:.0f} ms p95 {result['ttft_p95_ms']:.0f} ms, "
                        f"later-round reuse {result['later_rounds_mean_reuse']}, per replica "
                        f"{result['requests_per_replica']}",
                        flush=True,
                    )
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
