"""Why a restored answer could differ from an uncached one, and what holds.

Findings (docs/engine-facts.md, "Speculation and run-to-run answers"):

- A prompt-cache entry is never wrong: entries are written to a temporary file, fsynced and
  renamed, and a restored one is checked against its sha256 before use, so a write cut by
  a full disk leaves no entry and a damaged one is recomputed (test_cache_tiers.py,
  test_cache_disk_space.py). With speculation off, an answer restored from disk after a
  restart is the uncached answer, token for token (below).
- Speculative decoding is what changes answers between runs. Verifying guesses decodes
  several positions of one sequence in one call, whose logits can differ in the last bits
  from one-position decodes (llama.cpp's CPU kernels differ by batch shape), which flips
  greedy near-ties; and whether a step speculates at all follows timings measured at run
  time (`spec_adaptive`: the startup calibration and online cost model). So the same request
  can be decoded with and without guesses in two runs, on a loaded machine most of all, and
  a restart recalibrates. `--draft-max 0` makes answers depend only on the request.
- The thread count does not change answers (below).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

MODEL = "ai/gemma3"
PROMPTS = [
    f"Note {i}: " + " ".join(f"the {w} of item {i}" for w in ("color", "size", "price", "age") * 6)
    for i in range(4)
]


def answers(server: Any, cache: bool) -> list[tuple[str, str]]:
    """Each prompt's greedy answer and where its prompt's reuse came from."""
    out = []
    with httpx.Client(base_url=server.base_url, timeout=300) as http:
        for prompt in PROMPTS:
            body = {
                "model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0,
                "ignore_eos": True, "cache_prompt": cache,
            }  # fmt: skip
            reply = http.post("/completions", json=body)
            assert reply.status_code == 200, reply.text
            data = reply.json()
            out.append((data["choices"][0]["text"], data["timings"]["cache_source"]))
    return out


def test_answers_restored_from_disk_after_a_restart_equal_uncached_ones(
    start_server: Callable[..., Any],
) -> None:
    server = start_server(
        "--model", MODEL, "--slots", "1", "--ctx-size", "512", "--cache-ram", "0",
        "--draft-max", "0", "--idle-timeout", "-1",
    )  # fmt: skip
    first = answers(server, cache=True)  # each prompt pushes the last one to the disk tier
    server.restart()
    restored = answers(server, cache=True)
    assert sum(source == "disk" for _, source in restored) >= len(PROMPTS) - 1
    uncached = answers(server, cache=False)
    assert [t for t, _ in restored] == [t for t, _ in uncached] == [t for t, _ in first]


def test_the_thread_count_does_not_change_answers(start_server: Callable[..., Any]) -> None:
    got = []
    for threads in ("1", "2"):
        server = start_server(
            "--model", MODEL, "--slots", "1", "--ctx-size", "512", "--no-persist",
            "--draft-max", "0", "--threads", threads,
        )  # fmt: skip
        got.append([text for text, _ in answers(server, cache=False)])
        server.stop()
    assert got[0] == got[1]
