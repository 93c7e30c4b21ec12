"""Do runner and llama-server give the same greedy text, uncached, cached and concurrent?

    LLAMA_SERVER=/path/to/llama-server python scripts/compare_exactness.py [--threads 2]

Starts llama-server (built from the llama.cpp that llama-cpp-python vendors, see
compare_llama_server.sh) and runner side by side on the bundled model, then for a set of
chat prompts asks each server, greedy, for 32 tokens: with `cache_prompt: false`, again
with the cache (so the prefix is reused), and four at once. Prints, per mode, how many
outputs are identical between the servers, and for each server how often its cached and
concurrent answers equal its own uncached one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a terse expert in European history.",
]
QUESTIONS = [
    "Name three fruits.",
    "Explain what a hash table is.",
    "Write a haiku about autumn rain.",
    "What is the capital of Australia?",
    "Count from 5 upward in words.",
    "List four sorting algorithms.",
]


def chat(system: str, user: str) -> str:
    return f"<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n"


def complete(base: str, prompt: str, cache: bool) -> str:
    body = {
        "prompt": prompt,
        "max_tokens": 32,
        "temperature": 0,
        "cache_prompt": cache,
        "model": "ai/gemma3",
    }
    r = httpx.post(f"{base}/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def run_modes(base: str, prompts: list[str]) -> dict[str, list[str]]:
    uncached = [complete(base, p, cache=False) for p in prompts]
    warm = [complete(base, p, cache=True) for p in prompts]  # fills slots/caches
    cached = [complete(base, p, cache=True) for p in prompts]
    concurrent_out: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for i in range(0, len(prompts), 4):
            group = prompts[i : i + 4]
            concurrent_out += list(pool.map(lambda p: complete(base, p, False), group))
    return {"uncached": uncached, "warm": warm, "cached": cached, "concurrent": concurrent_out}


def wait_healthy(url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=Path("scripts/results/exactness"))
    args = ap.parse_args()
    llama_server = os.environ.get("LLAMA_SERVER")
    if not llama_server:
        raise SystemExit("set LLAMA_SERVER to a llama-server binary")
    from runner.config import Settings
    from runner.store import BUNDLED_TAGS, ModelStore

    model = ModelStore(Settings().models_dir).get(BUNDLED_TAGS[0]).path
    args.out.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    logs = contextlib.ExitStack()
    ls_log = logs.enter_context(open(args.out / "llama-server.log", "w"))  # noqa: SIM115
    rs_log = logs.enter_context(open(args.out / "runner.log", "w"))  # noqa: SIM115
    ls = subprocess.Popen(
        [llama_server, "-m", str(model), "--port", "18091", "-np", "4", "-c", "8192",
         "-t", threads, "--no-webui"],
        stdout=ls_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    rs = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", "--port", "18092", "--slots", "4",
         "--ctx-size", "2048", "--threads", threads, "--model", "ai/gemma3", "--no-persist"],
        stdout=rs_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_healthy("http://127.0.0.1:18091/health")
        wait_healthy("http://127.0.0.1:18092/health")
        prompts = [chat(s, q) for s in SYSTEMS for q in QUESTIONS]
        outputs = {
            "llama-server": run_modes("http://127.0.0.1:18091/v1", prompts),
            "runner": run_modes("http://127.0.0.1:18092/engines/llama.cpp/v1", prompts),
        }
    finally:
        for p in (ls, rs):
            p.terminate()
            p.wait(30)
        logs.close()
    n = len(prompts)
    report: dict[str, object] = {"prompts": n}
    for mode in ("uncached", "cached", "concurrent"):
        a, b = outputs["llama-server"][mode], outputs["runner"][mode]
        report[f"identical_{mode}"] = sum(x == y for x, y in zip(a, b, strict=True))
    for server, out in outputs.items():
        for mode in ("cached", "concurrent"):
            same = sum(x == y for x, y in zip(out[mode], out["uncached"], strict=True))
            report[f"{server}_{mode}_equals_its_uncached"] = same
    print(json.dumps(report, indent=2))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"exactness-{stamp}.json").write_text(
        json.dumps({"report": report, "outputs": outputs, "prompts": prompts}, indent=2)
    )


if __name__ == "__main__":
    main()
