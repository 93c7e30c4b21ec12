"""llama-server's slot files: save a slot's KV cache and tokens to a file, restore it, erase."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .types import InvalidRequest

if TYPE_CHECKING:
    from .scheduler import Scheduler


def slot_file(scheduler: Scheduler, slot_id: int, action: str, path: str | None) -> dict[str, Any]:
    """Save, restore or erase one idle slot; runs on the engine thread (via `call`)."""
    slot = scheduler.slots[slot_id]
    if slot.busy:
        raise InvalidRequest(f"slot {slot_id} is processing a request")
    started = time.perf_counter()
    if action == "erase":
        n = len(slot.tokens)
        scheduler.ctx.clear_seq(slot.id)
        slot.tokens = []
        return {"id_slot": slot_id, "n_erased": n}
    assert path is not None
    if action == "save":
        written = scheduler.ctx.save_seq_file(slot.id, path, slot.tokens)
        return {
            "id_slot": slot_id,
            "filename": os.path.basename(path),
            "n_saved": len(slot.tokens),
            "n_written": written,
            "timings": {"save_ms": (time.perf_counter() - started) * 1e3},
        }
    tokens = scheduler.ctx.load_seq_file(slot.id, path, slot.n_ctx)
    if tokens is None:
        slot.tokens = []
        raise InvalidRequest("the slot file could not be restored (wrong model or format)")
    slot.tokens = tokens
    return {
        "id_slot": slot_id,
        "filename": os.path.basename(path),
        "n_restored": len(tokens),
        "timings": {"restore_ms": (time.perf_counter() - started) * 1e3},
    }
