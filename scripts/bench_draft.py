"""Draft-model speculation on this machine, in-process (no HTTP): decode tokens/s of a copy
prompt and of a chat prompt, greedy, with speculation off, by prompt lookup, and with a draft
model (adaptive, and forced to draft every step), one engine after the other in one run.

    python scripts/bench_draft.py TARGET.gguf DRAFT.gguf [--threads 1] [--out results.json]

Without a smaller GGUF of the target's vocabulary, pass the target requantized (e.g. to Q2_K
with `llama_model_quantize`): such a draft costs about what the target does, so adaptive
drafting must leave it idle while forced drafting shows what it would cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

from runner.bench.spec import copy_messages
from runner.engine import Engine, EngineConfig
from runner.engine.types import GenerationRequest, SamplingParams

CHAT = "<start_of_turn>user\nTell me about the history of sailing.<end_of_turn>\n<start_of_turn>model\n"


def copy_prompt() -> str:
    text = copy_messages()[0]["content"]
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


def measure(config: EngineConfig, target: str, repeats: int, tokens: int) -> dict[str, object]:
    engine = Engine(target, config, name="bench")
    out: dict[str, object] = {}
    try:
        for label, prompt in (("copy", copy_prompt()), ("chat", CHAT)):
            rates, drafted, accepted, digest = [], 0, 0, ""
            for _ in range(repeats):
                request = GenerationRequest(
                    engine.tokenize(prompt),
                    SamplingParams(temperature=0.0),
                    max_tokens=tokens,
                    cache_prompt=False,
                    ignore_eos=True,
                    id_slot=0,
                )
                result = engine.generate(request, timeout=600)
                t = result.timings
                rates.append(t.predicted_n / (t.predicted_ms / 1e3))
                drafted += t.draft_n
                accepted += t.draft_n_accepted
                digest = hashlib.sha256(str(result.tokens).encode()).hexdigest()[:12]
            out[label] = {
                "decode_tps": round(statistics.median(rates), 1),
                "draft_n": drafted,
                "draft_n_accepted": accepted,
                "output": digest,
            }
    finally:
        engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("draft")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = {"slots": 2, "ctx_per_slot": 4096, "threads": args.threads}
    variants = {
        "off": EngineConfig(**base, spec_draft_max=0),
        "prompt lookup": EngineConfig(**base),
        "draft model": EngineConfig(**base, draft_model=args.draft),
        "draft model, forced (8)": EngineConfig(
            **base, draft_model=args.draft, spec_draft_max=8, spec_adaptive=False
        ),
    }
    report = {
        name: measure(config, args.target, args.repeats, args.tokens)
        for name, config in variants.items()
    }
    print(
        f"{'variant':26} {'copy tok/s':>10} {'drafted/kept':>13} {'chat tok/s':>10} "
        f"{'drafted/kept':>13}  outputs"
    )
    for name, row in report.items():
        cells = []
        for kind in ("copy", "chat"):
            r = row[kind]
            cells += [f"{r['decode_tps']:>10}", f"{r['draft_n']:>6}/{r['draft_n_accepted']:<6}"]
        print(f"{name:26} {' '.join(cells)}  {row['copy']['output']} {row['chat']['output']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
