"""What more than one dialect does to the model store: import a local GGUF (checked against
`import_policy` by the caller), with progress lines, and remove a model.

DMR's `/models/create` and `DELETE /models/{name}` and Ollama's `/api/pull` (of a local path)
and `/api/delete` share these.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Request

from runner.api.state import loader_of, store_of
from runner.store import InvalidModelFile, ModelStore

log = logging.getLogger(__name__)


def name_from_file(path: Path) -> str:
    """The tag a local file is imported under when none is given: its lower-cased stem."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._") or "model"
    return stem


async def import_lines(
    store: ModelStore, tag: str, path: Path, as_json: bool
) -> AsyncIterator[bytes]:
    """Adds the checked file `path` to the store as `tag`, yielding progress lines (JSON lines
    with `as_json`, else text), then a success or error line."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if percent != last[0]:  # at most ~100 lines
            last[0] = percent
            loop.call_soon_threadsafe(queue.put_nowait, (done, total))

    def line(kind: str, message: str, **extra: Any) -> bytes:
        if as_json:
            return (json.dumps({"type": kind, "message": message, **extra}) + "\n").encode()
        return (message + "\n").encode()

    yield line("progress", f"Importing {path} as {tag}", total=0, pulled=0)
    task = asyncio.ensure_future(asyncio.to_thread(store.add, tag, path, progress=progress))
    while not task.done() or not queue.empty():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            done, total = getter.result()
            yield line(
                "progress",
                f"Imported: {done / (1 << 20):.2f} MB / {total / (1 << 20):.2f} MB",
                total=total,
                pulled=done,
            )
        else:
            getter.cancel()
    try:
        entry = task.result()
    except Exception as exc:
        log.warning("import of %s as %s failed: %s", path, tag, exc)
        # The file was checked before the import began; quote nothing from it now either.
        reason = "the file is not a usable GGUF" if isinstance(exc, InvalidModelFile) else exc
        yield line("error", f"Model import failed: {reason}")
        return
    log.info("imported %s as %s (sha256:%s)", path, tag, entry.short_id)
    yield line("success", f"Model imported successfully: {tag}", id=f"sha256:{entry.id}")


async def remove_model(request: Request, name: str) -> dict[str, Any]:
    """Removes a model name (or every name of `sha256:ID`); the file goes with its last name.
    409 while the model is loaded and serving; an idle resident copy is unloaded first."""
    store = store_of(request)
    loader = loader_of(request)
    canonical = await asyncio.to_thread(store.resolve, name)
    await loader.forget(canonical)
    removed = await asyncio.to_thread(store.remove, canonical)
    log.info("deleted %s (untagged %s; file deleted: %s)", name, removed.untagged, removed.deleted)
    return {
        "id": f"sha256:{removed.id}",
        "untagged": removed.untagged,
        "deleted": removed.deleted,
    }
