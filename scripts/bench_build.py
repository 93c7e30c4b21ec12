#!/usr/bin/env python3
"""Prompt and decode speed of llama.cpp builds, side by side on one machine, one run.

Each build is a Python environment with llama-cpp-python installed (runner's venv, a venv with
a plain native build, a RUNNER_CPU=safe build, ...). Rounds alternate between the builds so
that whatever else the machine does falls on all of them alike; the same tokens go to each.

    python scripts/bench_build.py --build runner=.venv/bin/python \\
        --build native=/tmp/native-venv/bin/python [--rounds 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import llama_cpp
path, n_prompt, n_decode, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=path, n_ctx=n_prompt + n_decode + 8, n_batch=512,
                      n_threads=threads, n_threads_batch=threads, verbose=False)
text = " ".join(f"word{i % 97} and" for i in range(n_prompt))
tokens = llm.tokenize(text.encode())[:n_prompt]
t0 = time.perf_counter(); llm.eval(tokens); t1 = time.perf_counter()
tok = tokens[-1]
for _ in range(n_decode):
    llm.eval([tok]); tok = 1 + (tok * 7919) % 1000  # fixed tokens: the same work for every build
t2 = time.perf_counter()
print(json.dumps({"prompt_tps": len(tokens) / (t1 - t0), "decode_tps": n_decode / (t2 - t1),
                  "system_info": llama_cpp.llama_print_system_info().decode()}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append", required=True, help="NAME=PYTHON")
    ap.add_argument("--model", help="GGUF (default: the bundled model from runner's test store)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from runner.store import BUNDLED_TAGS, ModelStore

        store = ModelStore(Path.home() / ".cache" / "runner-test" / "models")
        store.ensure_default()
        model = str(store.get(BUNDLED_TAGS[0]).path)
    builds = dict(b.split("=", 1) for b in args.build)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    info: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, python in builds.items():
            out = subprocess.run(
                [python, "-c", CHILD, model, str(args.prompt_tokens), str(args.decode_tokens),
                 str(args.threads)],
                capture_output=True, text=True, check=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            info[name] = result.pop("system_info")
            runs[name].append(result)
    summary = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("prompt_tps", "decode_tps")}
        for name, rs in runs.items()
    }
    first = next(iter(summary))
    report = {
        "model": Path(model).name,
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "rounds": args.rounds,
        "median": summary,
        "ratio_vs_" + first: {
            name: {k: s[k] / summary[first][k] for k in s} for name, s in summary.items()
        },
        "runs": runs,
        "system_info": info,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
