"""What every kind of pull shares (`pull.py` for OCI and URLs, `hf.py` for the Hub): the
progress events, the staging file a download resumes in (`tmp/pull-<digest>.partial`), and
moving verified downloads into the store (one file, or a split GGUF's shards merged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .digests import staging_key
from .download import NO_SPACE
from .errors import DiskFull
from .index import ModelEntry
from .store import ModelStore


@dataclass(frozen=True)
class PullProgress:
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


PullProgressFn = Callable[[PullProgress], None]


def blob_progress(emit: PullProgressFn, model_id: str) -> Callable[[int, int], None]:
    status = f"pulling {model_id[:12]}"

    def report(done: int, total: int) -> None:
        emit(PullProgress(status, f"sha256:{model_id}", total, done))

    return report


def install_or_tag(
    store: ModelStore,
    name: str,
    model_id: str,
    size: int,
    fetch: Callable[[], object],
    emit: PullProgressFn,
) -> tuple[ModelEntry, int]:
    """Skip the download when the store has `model_id`; else run `fetch`, which must leave
    the verified file at `staging_path(store, model_id)`, and move it in."""
    if store.has_model(model_id):
        blob_progress(emit, model_id)(size, size)
        return store.tag(name, model_id), 0
    fetch()
    emit(PullProgress("verifying sha256 digest"))
    return store.install(name, staging_path(store, model_id), model_id), size


def staging_path(store: ModelStore, key: str) -> Path:
    """`tmp/pull-<key>.partial`; `key` is a digest (MalformedDigest otherwise), so the file
    and its `.lock` stay inside the store's `tmp/`."""
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    return store.tmp_dir / f"pull-{staging_key(key)}.partial"


def install_shards(
    store: ModelStore,
    name: str,
    shards: list[tuple[str, int]],
    fetch: Callable[[int], Path],
    emit: PullProgressFn,
) -> tuple[ModelEntry, int]:
    """A split GGUF: `shards` are (sha256 hex, size) in order; `fetch(i)` downloads shard i
    and returns its verified file. The shards are merged into one model (see `shards.py`)."""
    from .shards import merge, merged_model, remember_merged, shards_key

    key = shards_key([digest for digest, _ in shards])
    known = merged_model(store, key)
    if known:
        for digest, size in shards:
            blob_progress(emit, digest)(size, size)
        return store.tag(name, known), 0
    files = [fetch(i) for i in range(len(shards))]
    emit(PullProgress("verifying sha256 digest"))
    emit(PullProgress(f"merging {len(files)} shards"))
    merged = staging_path(store, f"merge-{key}")
    try:
        model_id = merge(files, merged)
    except OSError as exc:
        merged.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            reason = exc.strerror or "no space"  # not the OSError text: it names the path
            raise DiskFull(f"{name}: no space left to merge the shards ({reason})") from exc
        raise
    except BaseException:
        merged.unlink(missing_ok=True)
        raise
    entry = store.install(name, merged, model_id)
    remember_merged(store, key, model_id)
    for path in files:
        path.unlink(missing_ok=True)
    return entry, sum(size for _, size in shards)
