"""`runner status`, `runner ps`, `runner run MODEL [PROMPT]`: `docker model`'s client commands,
talking to a running server over HTTP (`--url`, env `RUNNER_URL`).

`REGISTRARS` add their parsers; `runner.cli` calls them when it builds its parser.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import Any

import httpx

from runner.cli.format import table
from runner.config import format_size

DEFAULT_URL = "http://127.0.0.1:12434"
# Small models (the bundled one is a base model) may never stop on their own: a terminal
# answer gets a bound, and says when it hit it.
RUN_MAX_TOKENS = 512


class ClientError(Exception):
    """Reported as `error: <message>` with exit code 1."""


def _add_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("RUNNER_URL") or DEFAULT_URL,
        metavar="URL",
        help=f"server to talk to [env RUNNER_URL; default {DEFAULT_URL}]",
    )


def _client(args: argparse.Namespace, timeout: httpx.Timeout | float = 30.0) -> httpx.Client:
    headers = {}
    key = os.environ.get("RUNNER_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=args.url.rstrip("/"), timeout=timeout, headers=headers)


def _not_running(args: argparse.Namespace, exc: Exception) -> ClientError:
    return ClientError(
        f"no runner server is reachable at {args.url} ({type(exc).__name__}); start one with "
        "`python -m runner serve`, or point --url / RUNNER_URL at it"
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    return f"server answered {response.status_code}: {message}"


def _get(args: argparse.Namespace, path: str) -> Any:
    try:
        with _client(args) as client:
            response = client.get(path)
    except httpx.TransportError as exc:
        raise _not_running(args, exc) from exc
    if response.status_code != 200:
        raise ClientError(_error_message(response))
    return response.json()


def _run_handler(handler: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapped


def _ago(timestamp: Any) -> str:
    if not timestamp:
        return "-"
    try:
        if isinstance(timestamp, int | float):
            then = float(timestamp)
        else:
            then = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return str(timestamp)
    seconds = max(0, int(time.time() - then))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _state(row: dict[str, Any]) -> str:
    if row.get("loading"):
        return "loading"
    return "in use" if row.get("in_use") else "idle"


# ----- status ------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    status = _get(args, "/engines/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"runner is running at {args.url}")
    print(f"backend: llama.cpp ({status.get('version', 'unknown version')})")
    devices = status.get("devices") or []
    if devices:
        print("devices:")
        for d in devices:
            memory = ""
            if d.get("memory_total"):
                memory = f", {format_size(d['memory_free'], 1)} free of {format_size(d['memory_total'], 1)}"
            print(f"  {d.get('name')} ({d.get('type')}): {d.get('description')}{memory}")
    print(f"gpu offload: {'yes' if status.get('gpu_offload') else 'no'}")
    budget = status.get("memory_budget")
    if budget:
        used = status.get("memory_used_estimate") or 0
        print(f"memory: {format_size(used, 1)} of {format_size(budget, 1)} budget (estimated)")
    models = status.get("models") or []
    if not models:
        print("models loaded: none")
    else:
        print("models loaded:")
        for m in models:
            layers = m.get("n_gpu_layers")
            print(
                f"  {m['model_name']}: {_state(m)}, {m.get('slots')} slots x "
                f"{m.get('context_size')} tokens, gpu layers {layers if layers is not None else '-'}"
                f", est. {format_size(m.get('memory_estimate') or 0, 1)}"
            )
    return 0


def _add_report(sub: Any, name: str, help_: str, handler: Any) -> None:
    """A command that prints one server answer: as text, or as the JSON with `--json`."""
    p = sub.add_parser(name, help=help_)
    _add_client_args(p)
    p.add_argument("--json", action="store_true", help="print the server's JSON")
    p.set_defaults(func=_run_handler(handler))


def add_status(sub: Any) -> None:
    _add_report(sub, "status", "is a server running; its backend, devices and models", cmd_status)


# ----- ps ----------------------------------------------------------------------------------


def cmd_ps(args: argparse.Namespace) -> int:
    served = _get(args, "/engines/ps")
    if args.json:
        print(json.dumps(served, indent=2))
        return 0
    rows = [["MODEL NAME", "BACKEND", "MODE", "STATE", "LAST USED", "KEEP ALIVE", "CONTEXT"]]
    for r in served:
        rows.append(
            [
                str(r.get("model_name")),
                str(r.get("backend_name")),
                str(r.get("mode")),
                _state(r),
                _ago(r.get("last_used")),
                str(r.get("keep_alive") or "-"),
                f"{r.get('slots')}x{r.get('context_size')}",
            ]
        )
    print(table(rows))
    return 0


def add_ps(sub: Any) -> None:
    _add_report(sub, "ps", "models loaded in a running server", cmd_ps)


# ----- run ---------------------------------------------------------------------------------


def _stream_chat(
    client: httpx.Client, args: argparse.Namespace, messages: list[dict[str, str]]
) -> str:
    """POST a streaming chat completion; print content as it arrives; return the text."""
    body: dict[str, Any] = {"model": args.model, "messages": messages, "stream": True}
    if args.max_tokens > 0:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    parts: list[str] = []
    finish = None
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ClientError(_error_message(response))
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if "error" in chunk:
                    message = chunk["error"].get("message", chunk["error"])
                    raise ClientError(f"the server stopped the answer: {message}")
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        parts.append(text)
                        sys.stdout.write(text)
                        sys.stdout.flush()
    except httpx.TransportError as exc:
        if not parts:
            raise _not_running(args, exc) from exc
        raise ClientError(f"the connection to {args.url} broke mid-answer ({exc})") from exc
    sys.stdout.write("\n")
    sys.stdout.flush()
    if finish == "length":  # say so, or a cut-off answer passes for a whole one
        limit = f"{args.max_tokens} tokens" if args.max_tokens > 0 else "the context size"
        print(f"[the answer was cut off at {limit}; --max-tokens N allows longer ones]",
              file=sys.stderr)  # fmt: skip
    return "".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    timeout = httpx.Timeout(30.0, read=None)  # a first request may wait for the model to load
    with _client(args, timeout) as client:
        messages: list[dict[str, str]] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        if args.prompt:
            messages.append({"role": "user", "content": " ".join(args.prompt)})
            _stream_chat(client, args, messages)
            return 0
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"Chatting with {args.model} at {args.url}. /bye or Ctrl-D to quit.")
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.strip()
            if text in ("/bye", "/exit", "/quit"):
                break
            if not text:
                continue
            messages.append({"role": "user", "content": text})
            try:
                answer = _stream_chat(client, args, messages)
            except ClientError:
                messages.pop()
                raise
            messages.append({"role": "assistant", "content": answer})
    return 0


def add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="chat with a model on a running server (one answer, or interactive)"
    )
    _add_client_args(p)
    p.add_argument("model", metavar="MODEL", help="model name, e.g. ai/gemma3")
    p.add_argument("prompt", nargs="*", metavar="PROMPT", help="one prompt (omit for a chat)")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=RUN_MAX_TOKENS,
        metavar="N",
        help=f"limit each answer (default {RUN_MAX_TOKENS}; -1: the server's default)",
    )
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    p.set_defaults(func=_run_handler(cmd_run))


REGISTRARS = (add_status, add_ps, add_run)
