"""llama-server's slot files: save a slot's KV cache and tokens to a file, restore it, erase.

A slot file is never taken on trust: a restored slot's tokens decide which prompts reuse its
KV (and the state may later be copied into the prompt cache, which outlives restarts), so a
file whose tokens no longer match its KV data would answer one prompt with another's context.
Files therefore use the prompt cache's entry format (`cache.diskformat`) under their own
magic: a sha256 over tokens+state, the model file's sha256 and the KV layout, all checked
before anything reaches llama.cpp; after the state is loaded, llama.cpp's own count of
positions must equal the token count.

Only the snapshot and the install run on the engine thread; reading, verifying and writing
files happen on a worker thread (no disk I/O on the engine step thread). Writes go to a
temporary file that is fsynced and renamed into place, so a failed save (full disk) leaves
no file behind and reports 507.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache.diskformat import (
    SLOT_MAGIC,
    InvalidEntry,
    decode_tokens,
    encode_tokens,
    entry_header,
    read_entry,
    unlink_quietly,
    write_all,
)
from .partition import ExactPrefix, plain_prefix, truncated
from .types import EngineError, InvalidRequest

if TYPE_CHECKING:
    from .scheduler import Scheduler

# Runs a step on the engine thread, lending it the scheduler there (`Engine.call_with_scheduler`).
OnEngine = Callable[[Callable[["Scheduler"], Any]], Awaitable[Any]]

# Out of space (or over a quota / file size limit): the client can free space and retry.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class SlotFileInvalid(EngineError):
    """The file is damaged, altered or not a slot file; nothing was restored."""


class SlotFileMismatch(EngineError):
    """The file was saved by another model file or with another KV layout."""


class SlotFileWriteFailed(EngineError):
    """The file could not be written (507 when out of space); no file was left behind."""


class SlotFileNoSpace(SlotFileWriteFailed):
    """The disk (or a quota) is full."""


@dataclass(frozen=True)
class SlotFileKey:
    """What a slot's state is only valid for (the same key as the prompt cache's)."""

    model_sha256: str
    kv_layout: str

    @property
    def model(self) -> bytes:
        return self.model_sha256.encode()

    @property
    def layout(self) -> bytes:
        return self.kv_layout.encode()


# -- engine thread ------------------------------------------------------------------------


def _idle_slot(scheduler: Scheduler, slot_id: int):  # noqa: ANN202 - Slot
    slot = scheduler.slots[slot_id]
    if slot.busy:
        raise InvalidRequest(f"slot {slot_id} is processing a request")
    return slot


def _snapshot(scheduler: Scheduler, slot_id: int) -> tuple[list[int], bytes]:
    slot = _idle_slot(scheduler, slot_id)
    kv = scheduler.executor
    if slot.tokens and slot.lora != scheduler.config.loaded_lora:
        # The file's key names the model's loaded adapters, not a request's own set.
        raise InvalidRequest("the slot holds KV of a per-request LoRA set; it is not saved")
    # Only the prefix that cannot change a later answer is worth keeping (partition.py);
    # the file has no cuts, so whole blocks before any other cut.
    keep = kv.truncate(slot.id, plain_prefix(slot.exact, scheduler.config.prefill_block))
    del slot.tokens[keep:]
    slot.exact = truncated(slot.exact, keep)
    tokens = list(slot.tokens)
    return tokens, kv.seq_state(slot.id) if tokens else b""


def _install(scheduler: Scheduler, slot_id: int, tokens: list[int], state: bytes) -> None:
    slot = _idle_slot(scheduler, slot_id)
    ctx = scheduler.executor
    ctx.clear(slot.id)
    slot.forget()
    if not tokens:
        return
    if len(tokens) >= slot.n_ctx:
        raise SlotFileMismatch(f"the file holds {len(tokens)} tokens; a slot holds {slot.n_ctx}")
    if not ctx.set_seq_state(slot.id, state):
        raise SlotFileInvalid("llama.cpp refused the saved KV state")
    held = ctx.pos_max(slot.id) + 1
    if held != len(tokens):
        ctx.clear(slot.id)
        raise SlotFileInvalid(
            f"the KV state holds {held} positions but the file lists {len(tokens)} tokens"
        )
    slot.tokens = tokens
    slot.lora = scheduler.config.loaded_lora  # what the file's key (kv_key) names
    block = scheduler.config.prefill_block
    slot.exact = ExactPrefix(len(tokens) // block * block)


def _erase(scheduler: Scheduler, slot_id: int) -> int:
    slot = _idle_slot(scheduler, slot_id)
    n = len(slot.tokens)
    scheduler.executor.clear(slot.id)
    slot.forget()
    return n


# -- worker thread (file I/O) ---------------------------------------------------------------


def write_slot_file(path: Path, key: SlotFileKey, tokens: list[int], state: bytes) -> int:
    """Write atomically; returns the file size. Raises SlotFileWriteFailed (no file left)."""
    tok_bytes = encode_tokens(tokens)
    head = entry_header(tok_bytes, state, key.model, key.layout, SLOT_MAGIC)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, head + tok_bytes)
            write_all(fd, state)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        unlink_quietly(tmp)
        reason = exc.strerror or str(exc)
        if exc.errno in _NO_SPACE:
            raise SlotFileNoSpace(f"cannot save slot file {path.name}: {reason}") from exc
        raise SlotFileWriteFailed(f"cannot save slot file {path.name}: {reason}") from exc
    return len(head) + len(tok_bytes) + len(state)


def read_slot_file(path: Path, key: SlotFileKey) -> tuple[list[int], bytes, int]:
    """Read and verify a slot file: (tokens, state, file size). Raises SlotFileInvalid or
    SlotFileMismatch saying why."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            tok_bytes, state = read_entry(f, size, key.model, key.layout, SLOT_MAGIC)
    except InvalidEntry as exc:
        reason = str(exc)
        kind = SlotFileMismatch if reason.startswith("saved ") else SlotFileInvalid
        raise kind(f"slot file {path.name} cannot be restored: {reason}") from exc
    except OSError as exc:
        raise SlotFileInvalid(f"slot file {path.name} cannot be read: {exc.strerror}") from exc
    return list(decode_tokens(tok_bytes)), state, size


# -- the action -----------------------------------------------------------------------------


async def slot_action(
    on_engine: OnEngine, slot_id: int, action: str, path: Path | None, key: SlotFileKey
) -> dict[str, Any]:
    """`save` an idle slot to `path`, `restore` it from there (verified), or `erase` it; the
    slot's snapshot, install and erase run on the engine thread through `on_engine`."""
    started = time.perf_counter()
    if action == "erase":
        n = await on_engine(lambda scheduler: _erase(scheduler, slot_id))
        return {"id_slot": slot_id, "n_erased": n}
    assert path is not None
    if action == "save":
        tokens, state = await on_engine(lambda scheduler: _snapshot(scheduler, slot_id))
        written = await asyncio.to_thread(write_slot_file, path, key, tokens, state)
        return {
            "id_slot": slot_id,
            "filename": path.name,
            "n_saved": len(tokens),
            "n_written": written,
            "timings": {"save_ms": (time.perf_counter() - started) * 1e3},
        }
    tokens, state, size = await asyncio.to_thread(read_slot_file, path, key)
    await on_engine(lambda scheduler: _install(scheduler, slot_id, tokens, state))
    return {
        "id_slot": slot_id,
        "filename": path.name,
        "n_restored": len(tokens),
        "n_read": size,
        "timings": {"restore_ms": (time.perf_counter() - started) * 1e3},
    }
