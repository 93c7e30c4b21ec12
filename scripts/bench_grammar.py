"""Generation speed with and without a JSON-schema grammar, on one or more servers.

    python scripts/bench_grammar.py --url runner=http://127.0.0.1:12434/v1 \
        --url llama-server=http://127.0.0.1:8080/v1 [--max-tokens 60] [--runs 5]

Each server gets the same chat request with ``ignore_eos`` and a fixed ``max_tokens``: once
plain, once with ``response_format: json_schema`` (an object with one long string, so the
grammar cannot complete before ``max_tokens``), and once with llama-server's generic JSON
grammar (``json_object``, which may end early: its figure counts only the tokens made). The
figure is the server's own ``timings.predicted_per_second`` (generation only, no prompt),
median of `--runs` interleaved rounds after one warm-up; the cost of the grammar is plain /
constrained. For runner it also reports the time spent in samplers per token (``/metrics``),
which a busy machine disturbs less than tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import httpx

SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 1500}},
    "required": ["story"],
}
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper as JSON."}]
VARIANTS = {
    "plain": {},
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
    },
    "json_object": {"response_format": {"type": "json_object"}},
}


def _sample_seconds(client: httpx.Client, root: str) -> float | None:
    """runner's cumulative time in samplers (None for servers without that metric)."""
    try:
        text = client.get(root + "/metrics").text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("runner:sample_seconds"):
            return float(line.split()[-1])
    return None


def run_once(client: httpx.Client, url: str, model: str, max_tokens: int, extra: dict) -> dict:
    body = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,
        **extra,
    }
    root = url.rstrip("/").rsplit("/v1", 1)[0].removesuffix("/engines/llama.cpp")
    before = _sample_seconds(client, root)
    resp = client.post(url.rstrip("/") + "/chat/completions", json=body)
    resp.raise_for_status()
    after = _sample_seconds(client, root)
    timings = resp.json()["timings"]
    n = timings["predicted_n"]
    sample_ms = None if before is None or after is None else (after - before) * 1e3 / max(n, 1)
    return {"tps": timings["predicted_per_second"], "n": n, "sample_ms": sample_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", required=True, help="NAME=BASE_URL (.../v1)")
    parser.add_argument("--model", default="ai/gemma3")
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    servers = [spec.partition("=")[::2] for spec in args.url]
    runs: dict[tuple[str, str], list[dict]] = {}
    with httpx.Client(timeout=600) as client:
        for _name, url in servers:  # warm-up
            for extra in VARIANTS.values():
                run_once(client, url, args.model, args.max_tokens, extra)
        # Rounds interleave servers and variants, so a busy machine slows all of them alike.
        for _ in range(args.runs):
            for name, url in servers:
                for variant, extra in VARIANTS.items():
                    result = run_once(client, url, args.model, args.max_tokens, extra)
                    runs.setdefault((name, variant), []).append(result)
    results: dict[str, dict[str, dict]] = {}
    for (name, variant), items in runs.items():
        sample = [r["sample_ms"] for r in items if r["sample_ms"] is not None]
        results.setdefault(name, {})[variant] = {
            "tokens_per_s": statistics.median(r["tps"] for r in items),
            "tokens": statistics.median(r["n"] for r in items),
            "sample_ms_per_token": statistics.median(sample) if sample else None,
        }
    print(f"max_tokens={args.max_tokens}, ignore_eos, median of {args.runs} runs")
    print(
        f"{'server':<16}{'plain t/s':>10}{'schema t/s':>12}{'object t/s':>18}{'cost':>7}"
        f"{'sampling ms/token plain/schema':>33}"
    )
    for name, row in results.items():
        plain, schema, obj = row["plain"], row["json_schema"], row["json_object"]
        ms = (
            f"{plain['sample_ms_per_token']:.2f} / {schema['sample_ms_per_token']:.2f}"
            if plain["sample_ms_per_token"] is not None
            else "-"
        )
        print(
            f"{name:<16}{plain['tokens_per_s']:>10.1f}{schema['tokens_per_s']:>12.1f}"
            f"{obj['tokens_per_s']:>11.1f} ({obj['tokens']:.0f}t)"
            f"{plain['tokens_per_s'] / schema['tokens_per_s']:>6.2f}x{ms:>33}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"max_tokens": args.max_tokens, "runs": args.runs, "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
