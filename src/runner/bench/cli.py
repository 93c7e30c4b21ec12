"""`runner bench {cache,concurrency,chat}`: argparse wiring and the run loop.

`configure(parser)` fills a parser (used by `runner.cli` for `runner bench`); `main(argv)` is
the standalone entry (`python -m runner.bench`). Without `--url` a `runner serve` is started on
a free port (`--slots`, `--ctx-size`, `--gpu-layers`, ...) and stopped afterwards; `--url local`
does the same explicitly, so `--url local --url http://127.0.0.1:8080/v1` compares runner with
a llama-server side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import WORKLOADS

if TYPE_CHECKING:  # the workload modules import httpx; keep `runner --help` light
    from .workloads import Plan

DEFAULT_MODEL = "ai/gemma3"
DEFAULT_OUT = "bench-results"

_HELP = {
    "cache": "cold long system prompt vs the same one with a new question (prompt-cache gain)",
    "concurrency": "N concurrent fixed-length streams: throughput, TTFT p50/p95, per-stream tok/s",
    "chat": "multi-turn conversations of N users sharing a system prompt: tokens reused per turn",
    "spec": "speculative decoding: decode tok/s copying a 25-function module (greedy, 200 "
    "tokens) and on plain chat; default A/B: runner with and without speculation",
}


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from exc
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels must be positive integers")
    return levels


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("target")
    g.add_argument(
        "--url",
        action="append",
        metavar="BASE",
        help="OpenAI base URL, e.g. http://127.0.0.1:12434/engines/llama.cpp/v1 (repeat for a "
        "side-by-side comparison; 'local' starts runner; default: local)",
    )
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"model name [default {DEFAULT_MODEL}]")
    g.add_argument("--api-key", default=os.environ.get("RUNNER_API_KEY"), help="bearer token")
    g.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="where JSON + PNG go")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    w = p.add_argument_group("workload")
    w.add_argument("--max-tokens", type=int, metavar="N", help="output tokens per request")
    w.add_argument("--no-warmup", action="store_true", help="skip the warm-up request")
    s = p.add_argument_group("local server (when no --url, or --url local)")
    s.add_argument("--slots", type=int, default=4, help="parallel slots [default 4]")
    s.add_argument("--ctx-size", type=int, default=2048, help="context per slot [default 2048]")
    s.add_argument("--gpu-layers", metavar="N|all", help="layers to offload (all, -1, N, 0)")
    s.add_argument("--threads", type=int, metavar="N", help="CPU threads")
    s.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="extra serve flag"
    )
    s.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for it")
    return p


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the workload subcommands to `parser`; each sets `func=run`."""
    common = _common()
    sub = parser.add_subparsers(dest="workload", metavar="WORKLOAD", required=True)
    for name in WORKLOADS:
        p = sub.add_parser(name, parents=[common], help=_HELP[name], description=_HELP[name])
        p.set_defaults(func=run)
        if name in ("cache", "chat"):
            p.add_argument(
                "--system-tokens", type=int, default=1000, metavar="N", help="system prompt size"
            )
        if name in ("cache", "spec"):
            p.add_argument("--repeats", type=int, default=3, help="requests of each kind")
        if name == "concurrency":
            p.add_argument("--levels", type=_levels, default=(1, 2, 4, 8, 16), metavar="LIST")
            p.add_argument(
                "--prompt-tokens", type=int, default=128, metavar="N", help="about (+template)"
            )
            p.add_argument("--rounds", type=int, default=1, help="batches per level")
            p.add_argument(
                "--no-ignore-eos",
                action="store_true",
                help="don't send ignore_eos (strict servers)",
            )
            p.add_argument(
                "--raw",
                action="store_true",
                help="raw /completions instead of chat (the same prompt tokens on any server)",
            )
        if name == "chat":
            p.add_argument("--users", type=int, default=4)
            p.add_argument("--turns", type=int, default=3)


def _plan(args: argparse.Namespace) -> Plan:
    from .workloads import Plan

    plan = Plan(max_tokens=args.max_tokens, warmup=not args.no_warmup)
    for key in ("system_tokens", "repeats", "levels", "prompt_tokens", "rounds", "users", "turns"):
        if hasattr(args, key):
            setattr(plan, key, getattr(args, key))
    plan.ignore_eos = not getattr(args, "no_ignore_eos", False)
    plan.raw = bool(getattr(args, "raw", False))
    return plan


def run(args: argparse.Namespace) -> int:
    """Run one workload against each `--url` (or a local runner) and write the report."""
    from . import report
    from .client import BenchError

    plan = _plan(args)
    stem = f"{args.workload}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(args.out)
    # `local-nospec`: a local runner with speculation off (the spec workload's B side).
    urls = args.url or (["local", "local-nospec"] if args.workload == "spec" else ["local"])
    runs = []
    try:
        for i, url in enumerate(urls):
            log = out / (f"{stem}-server.log" if len(urls) == 1 else f"{stem}-server{i}.log")
            runs.append(_run_one(args, plan, url, log))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if len({r["label"] for r in runs}) < len(runs):
        for i, r in enumerate(runs):
            r["label"] += f" #{i + 1}"
    found = report.ratios(runs)
    data = {
        "workload": args.workload,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "machine": report.machine_info(),
        "settings": plan.to_dict(),
        "runs": runs,
        "ratios": found,
    }
    json_path = out / f"{stem}.json"
    report.write_json(json_path, data)
    title = f"runner bench {args.workload} · {args.model} · " + " vs ".join(
        r["label"] for r in runs
    )
    png = report.plot(args.workload, runs, out / f"{stem}.png", title)
    for i, r in enumerate(runs):
        name = f"{'AB'[i]}: " if len(runs) == 2 else ""
        print(f"\n{args.workload} · {name}{r['label']} · model {args.model}")
        print(report.table(args.workload, r))
    if found:
        print("\nratios (A / B)\n" + report.ratio_table(found))
    print(f"\nwrote {json_path}" + (f" and {png}" if png else " (no PNG: matplotlib missing)"))
    return 0


def _run_one(args: argparse.Namespace, plan: Plan, url: str, log: Path) -> dict[str, Any]:
    from tqdm import tqdm

    from .server import LocalServer

    server = None
    extra_args = list(args.server_arg)
    if url == "local-nospec":
        url, extra_args = "local", [*extra_args, "--draft-max", "0"]
    if url == "local":
        print(f"starting runner serve ({args.model}, {args.slots} slots) ...", file=sys.stderr)
        server = LocalServer(
            args.model,
            slots=args.slots,
            ctx_size=args.ctx_size,
            gpu_layers=args.gpu_layers,
            threads=args.threads,
            extra_args=extra_args,
            models_dir=getattr(args, "models_dir", None),
            log_path=log,
        ).start(args.start_timeout)
        url = server.base_url
    try:
        label = "runner (local)" if server else url
        if server and "--draft-max" in extra_args:
            label = f"runner (local, --draft-max {extra_args[extra_args.index('--draft-max') + 1]})"
        with tqdm(
            total=plan.requests(args.workload),
            desc=f"{args.workload} {label}",
            unit="req",
            file=sys.stderr,
            disable=args.quiet,
        ) as bar:
            result = asyncio.run(_measure(args, plan, url, bar.update))
    finally:
        if server is not None:
            server.stop()
    extra = {"server_command": server.argv[1:], "server_log": str(log)} if server else {}
    return {"label": label, "url": url, "local": server is not None, **extra, **result}


async def _measure(args: argparse.Namespace, plan: Plan, url: str, tick: Any) -> dict[str, Any]:
    from .client import BenchClient
    from .workloads import WORKLOADS as RUNS

    async with BenchClient(url, args.model, args.api_key, args.timeout) as client:
        info = await client.server_info()
        result = await RUNS[args.workload](client, plan, tick)
    return {"server_info": info, **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runner bench", description="Benchmark runner or any OpenAI-compatible server."
    )
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
