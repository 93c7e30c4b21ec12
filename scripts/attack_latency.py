"""Chat latency alone and while each grammar or embeddings attack runs, in one server run.

    .venv/bin/python scripts/attack_latency.py [--chats 12] [--threads 2]

Starts `runner serve` with the bundled model (2 slots), then for each phase runs an attacker
in a loop (a new attack as soon as the last one ends) and times `--chats` short chats (8
tokens, greedy) one after another: p50 and p95 of their wall time, and what the attacks got
back. Phases: alone; a 60-byte grammar whose parse stacks triple per "a"; a grammar of 3,000
alternatives (under the size bound: cut by the per-token work bound); a 1 MB grammar of
100,000 alternatives (refused by size); `/api/embed` with 20,000 tiny inputs (its client
gives up when the phase ends, which cancels it).
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import httpx

MODEL = "ai/gemma3"
TRIPLING = 'root ::= s\ns ::= "a" s t | "a" s u | "a" s v\nt ::= "b"\nu ::= "c"\nv ::= "d"\n'


def alternatives(n: int) -> str:
    return "root ::= (" + " | ".join(f'"w{i:06d}"' for i in range(n)) + ")+\n"


def grammar_attack(gbnf: str, **sampling: object) -> Callable[[httpx.Client], int]:
    body = {"model": MODEL, "prompt": "a" * 32, "max_tokens": 64, "grammar": gbnf,
            "temperature": 0, "ignore_eos": True, **sampling}  # fmt: skip

    def attack(http: httpx.Client) -> int:
        return http.post("/engines/llama.cpp/v1/completions", json=body).status_code

    return attack


def embed_attack(seconds: float) -> Callable[[httpx.Client], int]:
    body = {"model": MODEL, "input": [f"w{i % 97}" for i in range(20_000)]}

    def attack(http: httpx.Client) -> int:
        try:
            return http.post("/api/embed", json=body, timeout=seconds).status_code
        except httpx.TimeoutException:
            return -1  # gave up at the end of the phase: the server cancels it

    return attack


def chat_latency(http: httpx.Client, n: int) -> list[float]:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    out = []
    for _ in range(n):
        started = time.perf_counter()
        reply = http.post("/engines/llama.cpp/v1/completions", json=body)
        out.append(time.perf_counter() - started)
        reply.raise_for_status()
    return out


def phase(url: str, attack: Callable[[httpx.Client], int] | None, chats: int) -> dict:
    stop = threading.Event()
    outcomes: collections.Counter[int] = collections.Counter()

    def attacker() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while not stop.is_set():
                outcomes[attack(http)] += 1  # type: ignore[misc]

    worker = threading.Thread(target=attacker, daemon=True)
    if attack is not None:
        worker.start()
        time.sleep(2.0)  # the attack is under way
    with httpx.Client(base_url=url, timeout=600) as http:
        times = chat_latency(http, chats)
    stop.set()
    if attack is not None:
        worker.join(600)
    q = statistics.quantiles(times, n=20, method="inclusive")
    return {"p50": statistics.median(times), "p95": q[18], "attacks": dict(outcomes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phases", default="0,1,2,3,4", help="which phases, by number (0: alone)")
    args = ap.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cache = tempfile.mkdtemp(prefix="attack-latency-")
    env = {**os.environ, "RUNNER_CACHE_DIR": cache}
    argv = [sys.executable, "-m", "runner", "serve", "--model", MODEL, "--port", str(port),
            "--slots", "2", "--ctx-size", "512", "--threads", str(args.threads),
            "--max-embed-tokens", "200000"]  # fmt: skip
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        phases = [
            ("alone", None),
            ("tripling grammar (60 B)", grammar_attack(TRIPLING)),
            (
                "3,000 alternatives (33 KB)",
                grammar_attack(alternatives(3000), temperature=0.8, top_k=0, seed=1),
            ),  # fmt: skip
            ("100,000 alternatives (1 MB)", grammar_attack(alternatives(100_000))),
            ("/api/embed 20,000 tiny inputs", embed_attack(60.0)),
        ]
        print(f"{'phase':32} {'p50 s':>7} {'p95 s':>7}  attacks (HTTP status: count)")
        chosen = [phases[int(i)] for i in args.phases.split(",")]
        for name, attack in chosen:
            result = phase(url, attack, args.chats)
            print(f"{name:32} {result['p50']:7.2f} {result['p95']:7.2f}  {result['attacks']}")
            sys.stdout.flush()
    finally:
        server.terminate()
        server.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
