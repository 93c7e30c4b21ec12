"""Chat latency alone and while slow pulls attack the server, in one run.

    python scripts/bench_pull_attack.py [--chats 15]

Starts `runner serve` on a private copy of the bundled model and a hostile registry (from
tests/slow_registry.py) that sends its model one byte at a time. Measures `--chats` chat
requests (and `/models`, `/api/tags`) alone; then starts six pulls whose clients leave
mid-download plus as many pulls as the server runs at once whose clients stay, and measures
again. Prints p50/p95 per phase and how many downloads were still running at the end.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from slow_registry import SlowRegistry  # noqa: E402

from runner.store import BUNDLED_TAGS, ModelStore  # noqa: E402

MODEL = BUNDLED_TAGS[0]
STAYING_PULLS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, registry: SlowRegistry) -> tuple[subprocess.Popen[bytes], str]:
    shared = ModelStore(Path.home() / ".cache" / "runner-test" / "models")
    shared.ensure_default()
    store = ModelStore(root / "models", bundled_default=False)
    store.add(MODEL, shared.get(MODEL).path, link=True)
    port = free_port()
    env = {
        **os.environ,
        "RUNNER_MODELS_DIR": str(root / "models"),
        "RUNNER_INSECURE_REGISTRIES": registry.host,
    }
    args = ["--model", MODEL, "--slots", "1", "--ctx-size", "1024", "--threads", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", *args, "--port", str(port), "--no-persist"],
        env=env,
        stdout=(root / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start")


def measure(url: str, chats: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"chat": [], "/models": [], "/api/tags": []}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(chats):
            for name, send in (
                ("chat", lambda: client.post("/v1/chat/completions", json=body)),
                ("/models", lambda: client.get("/models")),
                ("/api/tags", lambda: client.get("/api/tags")),
            ):
                started = time.perf_counter()
                response = send()
                timings[name].append(time.perf_counter() - started)
                response.raise_for_status()
    return timings


def start_pull(url: str, registry: SlowRegistry, n: int, ollama_route: bool) -> httpx.Client | None:
    """Pull `evil/slow<n>` (one blob per name: pulls of one blob would wait for each other)."""
    client = httpx.Client(base_url=url, timeout=60)
    name = f"{registry.host}/evil/slow{n}:latest"
    if ollama_route:
        request = client.build_request("POST", "/api/pull", json={"model": name})
    else:
        request = client.build_request(
            "POST", "/models/create", json={"from": name}, headers={"Accept": "application/json"}
        )
    response = client.send(request, stream=True)
    if response.status_code != 200:
        print(f"  pull refused: {response.status_code} {response.read()[:120]!r}")
        client.close()
        return None
    lines = response.iter_lines()
    for line in lines:
        if line and json.loads(line).get("digest"):
            break
    # Dropping the line iterator would close the connection: the client stays until closed.
    client.lines = lines  # type: ignore[attr-defined]
    return client


def report(phase: str, timings: dict[str, list[float]]) -> None:
    for name, values in timings.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(f"{phase:>8} {name:>10}: p50 {statistics.median(values):.3f} s  p95 {p95:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=15)
    args = parser.parse_args()
    registry = SlowRegistry()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp), registry)
        try:
            measure(url, 2)  # warm-up
            alone = measure(url, args.chats)
            for i in range(6):  # the attack: clients that leave mid-download
                client = start_pull(url, registry, i, ollama_route=i % 2 == 1)
                if client is not None:
                    client.close()
            staying = [start_pull(url, registry, 10 + i, False) for i in range(STAYING_PULLS)]
            print(f"  downloads running when measuring: {registry.trickling}")
            during = measure(url, args.chats)
            print(f"  downloads running at the end: {registry.trickling}")
            for client in staying:
                if client is not None:
                    client.close()
            report("alone", alone)
            report("attacked", during)
        finally:
            proc.terminate()
            proc.wait(60)
            registry.close()


if __name__ == "__main__":
    main()
