#!/usr/bin/env python3
"""Bounded soak test: N concurrent clients send a fixed number of mixed requests to one server.

    python scripts/soak.py                      # starts its own `runner serve` on loopback
    python scripts/soak.py --clients 32 --requests 300 --json
    python scripts/soak.py --url http://127.0.0.1:12434 --pid 1234

The mix (seeded, so runs are repeatable): non-streaming chat completions, streaming ones,
streams the client drops after the first token (the server must cancel them and free the
slot), and invalid requests (bad JSON, out-of-range fields, unknown model, deep nesting,
invalid UTF-8...) that must get a well-formed 4xx error. Every request ends as

* completed: a well-formed answer (streams end with `[DONE]`; dropped streams saw a token);
* errored:   a well-formed OpenAI error (HTTP error body, or an SSE error event);
* lost:      anything else: timeout, dropped connection, malformed body, missing `[DONE]`.

Reported: those counts (also per kind), p50/p99 latency of completed requests, server RSS
before (after a warm-up) and after, and whether every slot is idle at the end (`/slots`).
Exit status 0 when nothing was lost, every invalid request got a 4xx, the slots are idle
and a server started here exited 0 on SIGTERM; `--max-rss-growth PERCENT` adds RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

MODEL = "ai/gemma3"
CHAT = "/engines/llama.cpp/v1/chat/completions"
KINDS = {"chat": 0.35, "stream": 0.35, "cancel": 0.15, "invalid": 0.15}
TOPICS = ["rivers", "trains", "owls", "bread", "glaciers", "chess", "tea", "comets", "bees"]


@dataclass
class Outcome:
    kind: str
    result: str  # completed | errored | lost
    status: int | None
    seconds: float
    detail: str = ""


@dataclass
class Report:
    clients: int
    requests: int
    outcomes: list[Outcome] = field(default_factory=list)
    rss_before: int | None = None
    rss_after: int | None = None
    slots_idle: bool | None = None
    wall_seconds: float = 0.0
    server_exit: int | None = None

    def counts(self) -> dict[str, int]:
        c = Counter(o.result for o in self.outcomes)
        return {k: c.get(k, 0) for k in ("completed", "errored", "lost")}

    def by_kind(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {}
        for o in self.outcomes:
            table.setdefault(o.kind, Counter())[o.result] += 1
        return {k: dict(v) for k, v in sorted(table.items())}

    def latency(self, q: float) -> float | None:
        done = sorted(o.seconds for o in self.outcomes if o.result == "completed")
        if not done:
            return None
        return done[min(len(done) - 1, int(q * len(done)))]

    @property
    def invalid_accepted(self) -> int:
        return sum(1 for o in self.outcomes if o.kind == "invalid" and o.result != "errored")

    @property
    def rss_growth(self) -> float | None:
        if not self.rss_before or self.rss_after is None:
            return None
        return 100.0 * (self.rss_after - self.rss_before) / self.rss_before

    def ok(self, max_rss_growth: float | None = None) -> bool:
        growth = self.rss_growth
        return (
            self.counts()["lost"] == 0
            and self.invalid_accepted == 0
            and self.slots_idle is not False
            and self.server_exit in (None, 0)
            and (max_rss_growth is None or growth is None or growth < max_rss_growth)
        )

    def to_dict(self) -> dict[str, Any]:
        lost = [o.__dict__ for o in self.outcomes if o.result == "lost"]
        return {
            "clients": self.clients,
            "requests": self.requests,
            **self.counts(),
            "by_kind": self.by_kind(),
            "invalid_accepted": self.invalid_accepted,
            "p50_seconds": self.latency(0.50),
            "p99_seconds": self.latency(0.99),
            "rss_before_mib": _mib(self.rss_before),
            "rss_after_mib": _mib(self.rss_after),
            "rss_growth_percent": self.rss_growth,
            "slots_idle": self.slots_idle,
            "wall_seconds": self.wall_seconds,
            "server_exit": self.server_exit,
            "lost_details": lost[:20],
        }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / (1 << 20), 1)


# ----- requests ----------------------------------------------------------------------------


def _error_shaped(body: Any) -> bool:
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err


def _chat_body(rng: random.Random, i: int, stream: bool, max_tokens: int) -> dict[str, Any]:
    topic = rng.choice(TOPICS)
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": f"You are a terse assistant who likes {topic}."},
            {"role": "user", "content": f"Say something about {topic} (request {i})."},
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": i,
        "stream": stream,
    }


def _invalid_request(rng: random.Random, i: int) -> tuple[bytes, str]:
    good = _chat_body(rng, i, False, 4)
    cases: list[tuple[Any, str]] = [
        (b'{"model": "ai/gemma3", "messages": [', "malformed JSON"),
        ({**good, "temperature": -1}, "temperature < 0"),
        ({**good, "top_p": 7}, "top_p > 1"),
        ({**good, "model": "ai/does-not-exist"}, "unknown model"),
        ({**good, "messages": []}, "no messages"),
        ({**good, "max_tokens": 10**7}, "max_tokens beyond the context"),
        ({**good, "logit_bias": {"x": 1}}, "bad logit_bias key"),
        (b'{"model": "ai/gemma3", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "deep nesting"),
        (b'{"model": "ai/gemma3", "messages": [{"role": "user", "content": "\xff"}]}', "bad UTF-8"),
        (
            b'{"model": "ai/gemma3", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "surrogate",
        ),
    ]
    body, what = cases[i % len(cases)]
    return (body if isinstance(body, bytes) else json.dumps(body).encode()), what


async def _plain(client: httpx.AsyncClient, kind: str, content: bytes) -> Outcome:
    started = time.perf_counter()
    r = await client.post(CHAT, content=content, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    try:
        body = r.json()
    except ValueError:
        return Outcome(kind, "lost", r.status_code, elapsed, "response is not JSON")
    if r.status_code == 200 and isinstance(body, dict) and body.get("choices"):
        return Outcome(kind, "completed", 200, elapsed)
    if r.status_code >= 400 and _error_shaped(body):
        return Outcome(kind, "errored", r.status_code, elapsed, body["error"]["message"][:120])
    return Outcome(kind, "lost", r.status_code, elapsed, f"unexpected body {str(body)[:120]}")


async def _stream(client: httpx.AsyncClient, kind: str, body: dict[str, Any]) -> Outcome:
    started = time.perf_counter()
    cancel = kind == "cancel"
    async with client.stream("POST", CHAT, json=body) as r:
        if r.status_code != 200:
            raw = await r.aread()
            elapsed = time.perf_counter() - started
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if _error_shaped(parsed):
                return Outcome(kind, "errored", r.status_code, elapsed, parsed["error"]["message"])
            return Outcome(kind, "lost", r.status_code, elapsed, raw[:120].decode("replace"))
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return Outcome(kind, "completed", 200, time.perf_counter() - started)
            try:
                chunk = json.loads(data)
            except ValueError:
                return Outcome(kind, "lost", 200, time.perf_counter() - started, "bad SSE data")
            if _error_shaped(chunk):
                msg = chunk["error"]["message"][:120]
                return Outcome(kind, "errored", 200, time.perf_counter() - started, msg)
            delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
            if cancel and delta.get("content"):
                # Hang up mid-stream: leaving the block closes the connection.
                return Outcome(kind, "completed", 200, time.perf_counter() - started)
    return Outcome(kind, "lost", 200, time.perf_counter() - started, "stream ended without [DONE]")


async def _one(client: httpx.AsyncClient, rng: random.Random, i: int, kind: str) -> Outcome:
    started = time.perf_counter()
    try:
        if kind == "invalid":
            content, what = _invalid_request(rng, i)
            outcome = await _plain(client, kind, content)
            outcome.detail = f"{what}: {outcome.detail}"
            return outcome
        if kind == "chat":
            body = _chat_body(rng, i, False, rng.randint(4, 16))
            return await _plain(client, kind, json.dumps(body).encode())
        if kind == "stream":
            return await _stream(client, kind, _chat_body(rng, i, True, rng.randint(4, 16)))
        body = {**_chat_body(rng, i, True, 64), "ignore_eos": True}
        return await _stream(client, kind, body)
    except (httpx.HTTPError, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
        return Outcome(kind, "lost", None, time.perf_counter() - started, detail)


async def run_load(
    url: str, clients: int, requests: int, seed: int, timeout: float
) -> list[Outcome]:
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=requests)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker(w: int) -> None:
            local = random.Random(seed * 1000 + w)
            while not queue.empty():
                i = queue.get_nowait()
                outcomes.append(await _one(client, local, i, kinds[i]))

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return outcomes


# ----- the server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "runner", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--model", MODEL, "--slots", str(args.slots), "--ctx-size", str(args.ctx_size),
        "--threads", str(args.threads), "--no-persist", "--log-level", "warning",
    ]  # fmt: skip
    log = open(args.server_log, "ab") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"runner serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("runner serve did not become ready")


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def slots_idle(url: str, timeout: float = 60.0) -> bool:
    """True once `/slots` shows no slot processing (cancelled streams free theirs a step
    after the disconnect is noticed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            slots = httpx.get(url + "/slots", params={"model": MODEL}, timeout=10).json()
            if isinstance(slots, list) and not any(s.get("is_processing") for s in slots):
                return True
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def soak(
    url: str,
    clients: int = 32,
    requests: int = 300,
    pid: int | None = None,
    seed: int = 1,
    timeout: float = 180.0,
) -> Report:
    """Run the load against a server already up at `url` (`pid` for RSS figures)."""
    report = Report(clients, requests)
    warm_up = _chat_body(random.Random(0), 0, False, 4)  # loads the model before measuring
    httpx.post(url + CHAT, json=warm_up, timeout=300).raise_for_status()
    report.rss_before = _rss(pid)
    started = time.perf_counter()
    report.outcomes = asyncio.run(run_load(url, clients, requests, seed, timeout))
    report.wall_seconds = time.perf_counter() - started
    report.slots_idle = slots_idle(url)
    report.rss_after = _rss(pid)
    return report


def print_report(report: Report) -> None:
    d = report.to_dict()
    print(f"soak: {d['clients']} clients, {d['requests']} requests in {d['wall_seconds']:.1f}s")
    print(f"  completed {d['completed']}  errored {d['errored']}  lost {d['lost']}")
    for kind, counts in d["by_kind"].items():
        print(f"    {kind:8s} {counts}")
    p50, p99 = d["p50_seconds"], d["p99_seconds"]
    if p50 is not None:
        print(f"  latency (completed): p50 {p50:.2f}s  p99 {p99:.2f}s")
    print(f"  invalid requests accepted: {d['invalid_accepted']}")
    growth = d["rss_growth_percent"]
    growth_text = "n/a" if growth is None else f"{growth:+.1f}%"
    print(f"  server RSS: {d['rss_before_mib']} MiB -> {d['rss_after_mib']} MiB ({growth_text})")
    print(f"  slots idle afterwards: {d['slots_idle']}")
    if d["server_exit"] is not None:
        print(f"  server exit status after SIGTERM: {d['server_exit']}")
    for lost in d["lost_details"]:
        print(f"  LOST {lost}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="server to test (default: start one on loopback)")
    p.add_argument("--pid", type=int, help="pid of the --url server, for RSS figures")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=180.0, help="per-request timeout (s)")
    p.add_argument("--slots", type=int, default=4, help="for the server started here")
    p.add_argument("--ctx-size", type=int, default=1024, help="for the server started here")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--server-log", help="append the started server's log to this file")
    p.add_argument("--max-rss-growth", type=float, help="fail above this RSS growth (%%)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)

    proc = None
    url, pid = args.url, args.pid
    if url is None:
        proc, url = start_server(args)
        pid = proc.pid
    try:
        report = soak(url, args.clients, args.requests, pid, args.seed, args.timeout)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc is not None:
        report.server_exit = proc.returncode
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    return 0 if report.ok(args.max_rss_growth) else 1


if __name__ == "__main__":
    sys.exit(main())
