"""Pieces of the Ray cluster support that need no cluster: the radix index's block summary,
and `runner serve` staying free of Ray."""

from __future__ import annotations

import random
import subprocess
import sys

from runner.cache.radix import RadixIndex


def test_block_hashes_summarize_every_aligned_prefix() -> None:
    rng = random.Random(7)
    base = [rng.randrange(1000) for _ in range(100)]
    keys = [base[:70] + [rng.randrange(1000) for _ in range(n)] for n in (0, 5, 40, 90)]
    keys.append([rng.randrange(1000) for _ in range(33)])
    index: RadixIndex[int] = RadixIndex()
    for i, key in enumerate(keys):
        index.insert(key, i)
    for block in (1, 16, 32):
        expected = {h for key in keys for h in RadixIndex.prefix_hashes(key, block)}
        assert index.block_hashes(block) == expected
    # A prompt sharing 70 tokens with the cached keys matches exactly 70 // 16 blocks.
    held = index.block_hashes(16)
    prompt = RadixIndex.prefix_hashes(base[:70] + [-1] * 50, 16)
    matched = next(i for i, h in enumerate(prompt) if h not in held)
    assert matched == 70 // 16
    assert RadixIndex.prefix_hashes(base[:15], 16) == []


def test_runner_serve_does_not_import_ray() -> None:
    code = (
        "import sys, runner.cli, runner.api.server, runner.api.app\n"
        "runner.cli.build_parser()\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
