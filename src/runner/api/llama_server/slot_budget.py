"""The disk bound of llama-server's slot files (`POST /slots/{id}?action=save`).

Every save adds a file of the slot's whole KV state (megabytes per thousand tokens), and
nothing else ever removes one: `--slot-files-disk` (`RUNNER_SLOT_FILES_DISK`, default 4 GiB)
bounds them all together, every model's. After a save, the oldest other files are dropped
until the rest fit (a file saved again counts as new); a save bigger than the whole bound on
its own is removed and refused with a 413, so it never pushes every other file out.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from runner.api.errors.table import APIError
from runner.config import format_size

log = logging.getLogger(__name__)


def _files(root: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every slot file under `root` (a folder per model); the
    temporary files of saves in progress are not counted (dot names)."""
    out = []
    for path in root.glob("*/*"):
        if path.name.startswith("."):
            continue
        with contextlib.suppress(OSError):
            stat = path.stat()
            out.append((stat.st_mtime, stat.st_size, path))
    return out


def enforce(root: Path, saved: Path, limit: int) -> None:
    """Bound the slot files under `root` to `limit` bytes after `saved` was written: drop the
    oldest others first. Raises a 413 APIError (and removes `saved`) when `saved` alone is
    over the bound. Touches the disk: call it off the event loop."""
    files = _files(root)
    size = next((s for _, s, p in files if p == saved), 0)
    if size > limit:
        with contextlib.suppress(OSError):
            saved.unlink()
        raise APIError(
            413,
            f"the slot file holds {format_size(size)}, more than the {format_size(limit)} all "
            "slot files may take (--slot-files-disk); it was not kept",
            "slot_file_too_large",
            param="filename",
        )
    total = sum(s for _, s, _ in files)
    for _, s, path in sorted(f for f in files if f[2] != saved):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            total -= s
            log.info("slot file %s dropped: slot files are bounded by --slot-files-disk", path.name)
