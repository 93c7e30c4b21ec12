"""`pull(store, ref, progress)`: the one way a model gets from the network into the store.

Used by `runner models pull`, `POST /models/create {"from": NAME}` and Ollama's `/api/pull`.
`ref` is any name `refs.parse_source` understands (OCI, `hf.co/...`, an HTTPS URL).

Every pull downloads into the store's `tmp/` dir, resumes what an earlier attempt left
there, checks the sha256 before the file enters `blobs/`, and is idempotent: when the
store already holds the blob, it only (re)points the name at it and downloads nothing.

Progress events use Ollama's pull statuses so an API can stream them as they are:
"pulling manifest", "pulling <12-hex>" (with digest, total, completed bytes),
"verifying sha256 digest", "writing manifest", "success".
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from .artifact import parse_manifest
from .download import fetch_verified, in_use, raise_for_status, unreachable
from .errors import InvalidModelFile
from .index import ModelEntry
from .names import normalize
from .netguard import AddressPolicy, guarded_client
from .oci import Registry
from .refs import HfSource, OciSource, Source, UrlSource, parse_source
from .staging import (
    PullProgress,
    PullProgressFn,
    blob_progress,
    install_or_tag,
    install_shards,
    staging_path,
)
from .store import ModelStore

# An interrupted download is kept this long for the next pull to resume, then deleted.
ABANDONED_AFTER_S = 24 * 3600
# A partial written to within this long may be a pull that holds no lock on it (a merge of
# shards): the total bound leaves it alone.
ACTIVE_WITHIN_S = 600


@dataclass(frozen=True)
class PullResult:
    name: str  # the store tag the model is now under
    entry: ModelEntry
    downloaded: int  # bytes that came over the network in this pull (0: nothing needed)
    source: str  # the fully spelled-out reference that was pulled


def _quiet(_: PullProgress) -> None:
    pass


def pull(
    store: ModelStore,
    ref: str,
    progress: PullProgressFn | None = None,
    *,
    tag: str | None = None,
    sha256: str | None = None,
    settings: Settings | None = None,
) -> PullResult:
    """Pull `ref` into `store` as `tag` (default: the name the reference implies).
    `settings` gives the registry credentials and address policy (default: from the
    environment).

    Raises InvalidModelName for a malformed reference, and a PullError subclass for
    everything that can go wrong remotely or on disk (PullRefused for an address the
    settings do not allow).
    """
    source = parse_source(ref, sha256=sha256)
    name = normalize(tag) if tag else source.local_name
    settings = settings or Settings()
    emit = progress or _quiet
    sweep_partials(store, settings.partial_downloads_max)
    emit(PullProgress("pulling manifest"))
    try:
        if isinstance(source, OciSource):
            result = _pull_oci(store, source, name, emit, settings)
        elif isinstance(source, HfSource):
            from .hf import pull_hf

            entry, downloaded = pull_hf(store, source, name, emit, settings)
            result = PullResult(name, entry, downloaded, str(source))
        else:
            result = _pull_url(store, source, name, emit, settings)
    except InvalidModelFile:
        # The store's message quotes the file's first bytes and its temp path: neither is
        # for a remote's audience.
        raise InvalidModelFile(f"{source}: the download is not a GGUF model file") from None
    emit(PullProgress("writing manifest"))
    emit(PullProgress("success"))
    return result


def sweep_partials(store: ModelStore, max_bytes: int, now: float | None = None) -> None:
    """Delete interrupted downloads no pull is writing: those older than a day, then the
    oldest idle ones until the rest fit in `max_bytes`; and lock files left without a
    download."""
    if not store.tmp_dir.is_dir():
        return
    now = time.time() if now is None else now
    cutoff = now - ABANDONED_AFTER_S
    kept: list[tuple[float, int, Path]] = []
    for path in store.tmp_dir.glob("pull-*.partial"):
        with contextlib.suppress(OSError):
            stat = path.stat()
            if not path.is_file() or in_use(path):
                continue
            if stat.st_mtime < cutoff:
                path.unlink()
            else:
                kept.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in kept)
    for mtime, size, path in sorted(kept):
        if total <= max_bytes or mtime > now - ACTIVE_WITHIN_S:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size
    for lock in store.tmp_dir.glob("pull-*.lock"):
        with contextlib.suppress(OSError):
            if not lock.with_suffix(".partial").exists() and not in_use(lock):
                lock.unlink()
    # Left by an older runner that let huggingface_hub download into tmp/hf/.
    with contextlib.suppress(OSError):
        hf_dir = store.tmp_dir / "hf"
        if hf_dir.is_dir() and hf_dir.stat().st_mtime < cutoff:
            shutil.rmtree(hf_dir, ignore_errors=True)


def _pull_oci(
    store: ModelStore, source: OciSource, name: str, emit: PullProgressFn, settings: Settings
) -> PullResult:
    with Registry(source.registry, settings) as registry:
        manifest, digest = registry.manifest(source)
        artifact = parse_manifest(manifest)
        weights = artifact.weights
        template = None
        if artifact.chat_template is not None:
            template = registry.blob_bytes(source.repository, artifact.chat_template.digest)

        def fetch_layer(index: int) -> Path:
            layer = weights[index]
            path = staging_path(store, layer.hex)
            fetch_verified(
                lambda headers: registry.blob_stream(source.repository, layer.digest, headers),
                path,
                expected_sha256=layer.hex,
                size=layer.size,
                what=f"{source} layer {layer.hex[:12]}",
                progress=blob_progress(emit, layer.hex),
            )
            return path

        if len(weights) == 1:
            layer = weights[0]
            entry, downloaded = install_or_tag(
                store, name, layer.hex, layer.size, lambda: fetch_layer(0), emit
            )
        else:
            shards = [(layer.hex, layer.size) for layer in weights]
            entry, downloaded = install_shards(store, name, shards, fetch_layer, emit)
    if template is not None:
        # The template came with this name, and stays with it: the same GGUF under other
        # names (pulled from elsewhere, or bundled) renders with their own.
        config = store.get_config(name)
        config["chat-template"] = template.decode("utf-8", "replace")
        store.set_config(name, config)
    return PullResult(name, entry, downloaded, f"{source.registry}/{source.repository}@{digest}")


def _pull_url(
    store: ModelStore, source: UrlSource, name: str, emit: PullProgressFn, settings: Settings
) -> PullResult:
    import hashlib

    import httpx

    if source.sha256 and store.has_model(source.sha256):
        blob_progress(emit, source.sha256)(0, 0)
        return PullResult(name, store.tag(name, source.sha256), 0, source.url)
    key = source.sha256 or "url-" + hashlib.sha256(source.url.encode()).hexdigest()
    partial = staging_path(store, key)
    what = source.url
    policy = AddressPolicy(allow_private=settings.allow_private_pulls)
    timeout = httpx.Timeout(30.0, read=120.0)
    with guarded_client(policy, follow_redirects=True, timeout=timeout) as client:
        try:  # HEAD for the size, so an interrupted transfer can be detected and resumed
            head = client.head(source.url)
        except httpx.TransportError as exc:
            raise unreachable(what, exc) from exc
        if head.status_code == 404:
            raise_for_status(head, what)
        # Some servers refuse HEAD (a URL signed for GET only): then the GET tells, sizeless.
        length = head.headers.get("content-length", "")
        plain = "gzip" not in head.headers.get("content-encoding", "")
        size = int(length) if head.status_code == 200 and length.isdigit() and plain else None
        digest = fetch_verified(
            lambda headers: client.stream("GET", source.url, headers=headers),
            partial,
            expected_sha256=source.sha256,
            size=size,
            what=what,
            progress=blob_progress(emit, source.sha256 or key[4:]),
        )
    emit(PullProgress("verifying sha256 digest"))
    if store.has_model(digest):
        partial.unlink(missing_ok=True)
        return PullResult(name, store.tag(name, digest), size or 0, source.url)
    entry = store.install(name, partial, digest)
    return PullResult(name, entry, entry.size, source.url)


__all__ = ["PullProgress", "PullProgressFn", "PullResult", "Source", "pull"]
