"""One prompt-cache disk budget per model file: Ollama's `num_ctx` loads the model with another
KV layout each time, and each layout used to get all of `--cache-disk`, its files kept for
ever. Now layouts no engine uses are dropped (files included) and the model's folder stays
within one budget. The `ollama` client against a real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ollama
import pytest
from conftest import ServerHandle
from server_proc import MODEL, wait_for

pytestmark = pytest.mark.slow

BUDGET = 6 << 20
PROMPT = "The quick brown fox jumps over the lazy dog while the river runs on. " * 14


def _usage(folder: Path) -> dict[str, int]:
    """Bytes on disk per layout folder."""
    if not folder.exists():
        return {}
    return {
        layout.name: sum(f.stat().st_size for f in layout.rglob("*") if f.is_file())
        for layout in folder.iterdir()
        if layout.is_dir()
    }


def test_num_ctx_values_share_one_disk_budget(start_server: Callable[..., ServerHandle]) -> None:
    server = start_server(
        "--slots", "1", "--ctx-size", "1024", "--cache-ram", "0", "--cache-disk", str(BUDGET)
    )  # fmt: skip
    client = ollama.Client(host=server.url)
    digest = next(m.digest for m in client.list().models if m.model == MODEL)
    folder = Path(server.env["RUNNER_CACHE_DIR"]) / digest[:16]
    messages = [{"role": "user", "content": PROMPT}]
    for num_ctx in (512, 640, 768, 896):
        options = {"num_ctx": num_ctx, "num_predict": 2, "temperature": 0}
        assert client.chat(model=MODEL, messages=messages, options=options, keep_alive=0).done
    # Unloaded right after (keep_alive 0): the last prompt state is written to disk.
    assert wait_for(lambda: sum(_usage(folder).values()) > 0, 60)
    usage = _usage(folder)
    # Only the last layout is left, within the one budget (the three before were dropped).
    assert list(usage) == [next(k for k in usage if "ctx896-" in k)], usage
    assert 0 < sum(usage.values()) <= BUDGET
    server.stop()
