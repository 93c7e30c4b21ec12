"""One prompt-cache disk budget per model file, whatever its KV layouts.

A model loaded with another context size (Ollama's `num_ctx`, a `_configure` change) has
another KV layout, so another `PromptCache` with a disk tier of its own. Each used to get the
whole `--cache-disk`, and the tiers of layouts no longer loaded stayed on disk for ever (eight
`num_ctx` values: eight budgets). Now the loader gives a new layout what the model's loaded
layouts leave of the budget (`disk_share`), and first drops the layouts no engine uses, their
files included (`prune_layouts`), so one model's folder stays within one budget.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from runner.cache.diskformat import safe_component

log = logging.getLogger(__name__)


def disk_share(budget: int, taken: Iterable[int]) -> int:
    """What a new layout's disk tier may hold: the budget less the capacities `taken` by
    the model's other open layouts (0: that layout caches in RAM only)."""
    return max(0, budget - sum(taken))


def prune_layouts(cache_root: Path, model_sha256: str, keep: Iterable[str]) -> int:
    """Delete the disk tiers of `model_sha256`'s layouts not in `keep` (left by an earlier
    load or run); returns how many. Call it off the event loop."""
    folder = cache_root / safe_component(model_sha256[:16])
    names = {safe_component(layout) for layout in keep}
    try:
        stale = [d for d in folder.iterdir() if d.is_dir() and d.name not in names]
    except OSError:  # no folder yet
        return 0
    for directory in stale:
        shutil.rmtree(directory, ignore_errors=True)
        log.info("prompt cache: dropped %s (a KV layout no engine of this model uses)", directory)
    return len(stale)
