"""`push` a stored model to an OCI registry, and `package` a GGUF file, in Docker Model
Runner's artifact format (see `artifact.py`), so DMR and runner can both pull the result.

The GGUF layer's digest is the model's store ID (both are the file's sha256), so a pushed
model pulled back lands on the same blob.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from .artifact import (
    CHAT_TEMPLATE_LAYER,
    GGUF_LAYER,
    LICENSE_LAYER,
    OCI_MANIFEST,
    manifest,
    model_config,
)
from .errors import InvalidModelFile, InvalidModelName
from .fileio import ProgressFn
from .index import ModelEntry
from .oci import Registry
from .refs import OciSource, parse_source
from .store import ModelStore

_FIRST_SHARD = re.compile(r"-00001-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class Pushed:
    reference: str  # registry/repository:tag
    digest: str  # the manifest's digest: `registry/repository@digest` pulls exactly this


def oci_target(ref: str) -> OciSource:
    source = parse_source(ref)
    if not isinstance(source, OciSource) or source.digest:
        raise InvalidModelName(f"cannot push to {ref!r}: give a registry name with a tag")
    return source


def push(
    store: ModelStore,
    name: str,
    ref: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    licenses: Sequence[Path] = (),
    settings: Settings | None = None,
) -> Pushed:
    """Push model `name` to `ref` (default: `name` itself). `progress(what, done, total)`."""
    entry = store.get(name)
    target = oci_target(ref or entry.name)
    layers: list[tuple[str, str, int, bytes | Path]] = [
        (GGUF_LAYER, f"sha256:{entry.id}", entry.size, entry.path)
    ]
    config = store.get_config(name)
    extras = (
        [(CHAT_TEMPLATE_LAYER, config["chat-template"].encode())]
        if isinstance(config.get("chat-template"), str)
        else []
    )
    extras += [(LICENSE_LAYER, Path(p).read_bytes()) for p in licenses]
    for media_type, data in extras:
        layers.append((media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), data))
    context = config.get("context-size") if isinstance(config.get("context-size"), int) else None
    config_blob = model_config(entry.metadata, entry.size, [d for _, d, _, _ in layers], context)
    config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()
    body = manifest((config_digest, len(config_blob)), [(m, d, s) for m, d, s, _ in layers])
    with Registry(target.registry, settings) as registry:
        for _, digest, _, data in layers:
            report = (lambda d, t, w=digest: progress(w, d, t)) if progress else None
            registry.upload_blob(target.repository, digest, data, report)
        registry.upload_blob(target.repository, config_digest, config_blob)
        digest = registry.put_manifest(target.repository, target.tag, body, OCI_MANIFEST)
    return Pushed(f"{target.registry}/{target.repository}:{target.tag}", digest)


def shard_siblings(first: Path) -> list[Path]:
    """All shards of a split GGUF given its first (`x-00001-of-00003.gguf`), else [first]."""
    found = _FIRST_SHARD.search(first.name)
    if not found:
        return [first]
    count = int(found.group(1))
    prefix = first.name[: found.start()]
    shards = [first.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise InvalidModelFile(f"split GGUF {first.name}: missing {', '.join(missing)}")
    return shards


def package(
    store: ModelStore,
    gguf: Path,
    ref: str,
    *,
    chat_template: Path | None = None,
    context_size: int | None = None,
    progress: ProgressFn | None = None,
) -> ModelEntry:
    """Import `gguf` into the store under `ref`'s local name, with the packaging options
    saved as the model's config (a later `push` publishes them)."""
    target = oci_target(ref)
    shards = shard_siblings(Path(gguf))
    if len(shards) > 1:  # a split GGUF, given by its first shard: the store holds it joined
        from .shards import merge

        store.tmp_dir.mkdir(parents=True, exist_ok=True)
        joined = store.tmp_dir / f"package-{uuid.uuid4().hex}.gguf"
        try:
            merge(shards, joined, progress)
            entry = store.add(target.local_name, joined)
        finally:
            joined.unlink(missing_ok=True)
    else:
        entry = store.add(target.local_name, gguf, progress=progress)
    config = store.get_config(target.local_name)
    if chat_template is not None:
        config["chat-template"] = Path(chat_template).read_text(encoding="utf-8")
    if context_size is not None:
        config["context-size"] = int(context_size)
    if chat_template is not None or context_size is not None:
        store.set_config(target.local_name, config)
    return entry
