"""`ModelStore`: content-addressed GGUF blobs plus a JSON index of tags.

Layout under `models_dir`:

    index.json               {"version", "seeded", "tags": {tag: id}, "models": {id: {...}},
                              "configs": {tag: {...}}}   per-name runtime config
    blobs/sha256-<id>.gguf   the model files (hard links or copies; never symlinks)
    tmp/                     staging, same filesystem as blobs/ so os.replace is atomic
    .lock                    flock'ed for every mutation (several processes may share a store)

A name's config (what `_configure` set, the chat template its pull brought) belongs to the
name, not to its file: the same GGUF under another name renders with that name's own
template. It goes when the name is removed or re-pointed at another file, in the same
atomic index write.

The index is only ever replaced atomically, so readers take no lock. Blobs are written before
the index names them and unlinked after it stops naming them, so a crash leaves at worst an
unreferenced blob, never an index entry pointing at nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import bundled
from .errors import AmbiguousModelName, ModelFileMissing, ModelNotFound, StoreError
from .fileio import (
    ProgressFn,
    StoreLock,
    TqdmProgress,
    atomic_write_json,
    copy_hashing,
    read_json,
    sha256_file,
)
from .gguf_meta import GGUFMetadata, read_metadata
from .index import (
    Index,
    ModelEntry,
    Removed,
    check_model_id,
    empty_index,
    record,
    retag,
    untag,
    validate_index,
)
from .legacy_configs import fold_file_configs
from .names import id_prefix, normalize, parse, resolve


class ModelStore:
    """The local model store. Safe to share between threads and processes."""

    def __init__(self, models_dir: str | Path, *, bundled_default: bool = True) -> None:
        # Resolve once so later containment checks compare real paths.
        self.root = Path(models_dir).expanduser().resolve()
        self.blobs_dir = self.root / "blobs"
        self.configs_dir = self.root / "configs"
        self.tmp_dir = self.root / "tmp"
        self.index_path = self.root / "index.json"
        self.bundled_default = bundled_default
        self._lock = StoreLock(self.root / ".lock")

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ----- queries -------------------------------------------------------------------------

    def list(self) -> list[ModelEntry]:
        """Every model, sorted by name. A fresh store gets the bundled default first."""
        self._seed()
        index = self._read_index()
        entries = [self._entry(index, model_id) for model_id in index["models"]]
        return sorted(entries, key=lambda e: (not e.tags, e.name))

    def resolve(self, name: str) -> str:
        """The canonical tag (or full ID, for ID references) that `name` refers to.

        Unlike `get`, never materializes the bundled model, so `resolve` then `remove` can't
        resurrect a model only to delete it again.
        """
        return self._lookup(self._read_index(), name)[1]

    def get(self, name: str) -> ModelEntry:
        """The model `name` refers to (partial names and IDs allowed), with its file present.

        Raises ModelNotFound / AmbiguousModelName / InvalidModelName / ModelFileMissing.
        Asking for the bundled `ai/gemma3` materializes it if needed (also after removal).
        """
        self._seed()
        try:
            model_id = self._lookup(self._read_index(), name)[0]
        except ModelNotFound:
            if not self._is_bundled_ref(name):
                raise
            self.ensure_default()
            model_id = self._lookup(self._read_index(), name)[0]
        if model_id == self._bundled_id() and not self._blob_ok(model_id):
            self.ensure_default()  # the bundled blob can always be rebuilt, so repair it
        entry = self._entry(self._read_index(), model_id)
        self._check_blob(entry)
        return entry

    def entry(self, name: str) -> ModelEntry:
        """The model `name` refers to, as the index records it: its file is neither checked
        nor repaired (for removing a model whose file is broken or gone)."""
        index = self._read_index()
        return self._entry(index, self._lookup(index, name)[0])

    # ----- mutations -----------------------------------------------------------------------

    def add(
        self,
        name: str,
        path: str | Path,
        *,
        link: bool = True,
        progress: ProgressFn | None = None,
    ) -> ModelEntry:
        """Import the GGUF at `path` as `name`; returns the entry.

        Name and file are validated before the store is touched, so errors leave it as it
        was. `link` hard-links when possible (same filesystem), else copies. An existing
        blob with the same content just gains the tag; a tag that pointed elsewhere moves.
        """
        tag = normalize(name)
        read_metadata(path)  # raises InvalidModelFile before anything is written
        src = Path(path).expanduser().resolve()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        staged = self.tmp_dir / f"add-{uuid.uuid4().hex}.gguf"
        try:
            if link and self._try_link(src, staged):
                digest = sha256_file(staged, progress)
            else:
                digest = copy_hashing([src], staged, progress)
            # Re-read from our own copy: the source may have changed since the first check.
            meta = read_metadata(staged)
            with self._lock():
                index = self._read_index()
                if not (digest in index["models"] and self._blob_ok(digest)):
                    self._install_blob(index, digest, staged, meta)
                doomed = retag(index, tag, digest)
                self._write_index(index)
                self._delete_blobs(doomed)  # under the lock: a concurrent add may revive it
        finally:
            staged.unlink(missing_ok=True)
        return self._entry(self._read_index(), digest)

    def has_model(self, model_id: str) -> bool:
        """Whether the blob with full ID `model_id` is in the store (so a pull can skip it)."""
        return model_id in self._read_index()["models"] and self._blob_ok(model_id)

    def install(self, name: str, staged: Path, model_id: str) -> ModelEntry:
        """Move `staged` (a file under `tmp_dir` whose sha256 the caller verified to be
        `model_id`) into the store as `name`. The file is consumed either way."""
        tag = normalize(name)
        check_model_id(model_id)
        try:
            meta = read_metadata(staged)  # InvalidModelFile before the store changes
            with self._lock():
                index = self._read_index()
                if not (model_id in index["models"] and self._blob_ok(model_id)):
                    self._install_blob(index, model_id, staged, meta)
                doomed = retag(index, tag, model_id)
                self._write_index(index)
                self._delete_blobs(doomed)
        finally:
            staged.unlink(missing_ok=True)
        return self._entry(self._read_index(), model_id)

    def tag(self, name: str, model_id: str) -> ModelEntry:
        """Point `name` at the model with full ID `model_id`, which must be in the store."""
        tag = normalize(name)
        with self._lock():
            index = self._read_index()
            if model_id not in index["models"]:
                raise ModelNotFound(model_id)
            doomed = retag(index, tag, model_id)
            self._write_index(index)
            self._delete_blobs(doomed)
        return self._entry(self._read_index(), model_id)

    def copy(self, source: str, destination: str) -> ModelEntry:
        """Name `destination` what `source` names, with `source`'s own config (Ollama's
        `cp`): the file is shared, the copied config then is the new name's."""
        tag = normalize(destination)
        self._migrate_file_configs()
        with self._lock():
            index = self._read_index()
            model_id, canonical = self._lookup(index, source)
            config = index["configs"].get(canonical)
            doomed = retag(index, tag, model_id)
            if isinstance(config, dict) and tag != canonical:
                index["configs"][tag] = json.loads(json.dumps(config))
            self._write_index(index)
            self._delete_blobs(doomed)
        return self._entry(self._read_index(), model_id)

    def remove(self, name: str) -> Removed:
        """Remove tag `name` (exact, after normalization), or every tag of an ID reference.

        The blob and its config are deleted once no tag points at it.
        """
        with self._lock():
            index = self._read_index()
            tags: dict[str, str] = index["tags"]
            prefix = id_prefix(name)
            if name.strip().lower().startswith("sha256:") or (
                prefix and normalize(name) not in tags
            ):
                model_id = self._by_id(index, name)
                untagged = sorted(t for t, i in tags.items() if i == model_id)
            else:
                tag = normalize(name)
                if tag not in tags:
                    raise ModelNotFound(name)
                model_id, untagged = tags[tag], [tag]
            doomed = untag(index, untagged, model_id)
            self._write_index(index)
            self._delete_blobs(doomed)
        return Removed(model_id, untagged, bool(doomed))

    def ensure_default(self, progress: ProgressFn | None = None) -> ModelEntry:
        """Make sure the bundled model is in the store under its tags (free if it already is).

        Tags that a user re-pointed at another model are left alone.
        """
        model_id = bundled.expected_sha256()
        with self._lock():
            index = self._read_index()
            if not (model_id in index["models"] and self._blob_ok(model_id)):
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                staged = self.tmp_dir / f"bundled-{uuid.uuid4().hex}.gguf"
                try:
                    bundled.materialize(staged, progress or TqdmProgress(bundled.TAGS[0]))
                    self._install_blob(index, model_id, staged, read_metadata(staged))
                finally:
                    staged.unlink(missing_ok=True)
            for tag in bundled.TAGS:
                index["tags"].setdefault(tag, model_id)
            index["seeded"] = True
            self._write_index(index)
            return self._entry(index, model_id)

    # ----- per-name config -----------------------------------------------------------------

    def get_config(self, name: str) -> dict[str, Any]:
        """Persisted runtime config of model name `name` ({} if none was set or there is no
        such name). A full-ID reference gives the config of the model's primary name."""
        self._migrate_file_configs()
        index = self._read_index()
        try:
            tags = self._config_tags(index, name)
        except ModelNotFound:
            return {}
        config = index["configs"].get(tags[0]) if tags else None
        return json.loads(json.dumps(config)) if isinstance(config, dict) else {}

    def set_config(self, name: str, config: dict[str, Any]) -> None:
        """Persist `config` (JSON-serializable) for model name `name`; a full-ID reference
        sets it for every name of that model."""
        try:
            config = json.loads(json.dumps(config))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"model config is not JSON-serializable: {exc}") from exc
        self._migrate_file_configs()
        with self._lock():
            index = self._read_index()
            for tag in self._config_tags(index, name):
                index["configs"][tag] = config
            self._write_index(index)

    def _config_tags(self, index: Index, name: str) -> list[str]:
        model_id, canonical = self._lookup(index, name)
        if canonical != model_id:
            return [canonical]
        return sorted(t for t, i in index["tags"].items() if i == model_id)

    def _migrate_file_configs(self) -> None:
        """An older runner's `configs/<id>.json` become per-name configs, once."""
        if not self.configs_dir.is_dir():
            return
        with self._lock():
            if not self.configs_dir.is_dir():
                return
            index = self._read_index()
            fold_file_configs(self.configs_dir, index)
            self._write_index(index)
            shutil.rmtree(self.configs_dir, ignore_errors=True)

    # ----- internals -----------------------------------------------------------------------

    def _seed(self) -> None:
        """First use of a store brings in the bundled model; later removals stick."""
        if not self.bundled_default or self._read_index().get("seeded"):
            return
        if bundled.available():
            self.ensure_default()

    def _is_bundled_ref(self, name: str) -> bool:
        if not self.bundled_default or not bundled.available():
            return False
        ref = parse(name)
        return str(ref) in bundled.TAGS or (not ref.explicit_tag and ref.repo == bundled.REPO)

    def _bundled_id(self) -> str | None:
        return bundled.expected_sha256() if self.bundled_default and bundled.available() else None

    def _read_index(self) -> Index:
        try:
            raw = read_json(self.index_path, None)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.index_path}: unreadable store index ({exc})") from exc
        return empty_index() if raw is None else validate_index(raw, self.index_path)

    def _write_index(self, index: Index) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.index_path, index)

    def _lookup(self, index: Index, name: str) -> tuple[str, str]:
        """(model id, canonical name) for a tag, partial tag or ID reference."""
        if name.strip().lower().startswith("sha256:"):
            model_id = self._by_id(index, name)
            return model_id, model_id
        try:
            tag = resolve(name, index["tags"])
        except ModelNotFound:
            if not id_prefix(name):
                raise
            model_id = self._by_id(index, name)
            return model_id, model_id
        return index["tags"][tag], tag

    def _by_id(self, index: Index, name: str) -> str:
        prefix = id_prefix(name)
        matches = [i for i in index["models"] if prefix and i.startswith(prefix)]
        if len(matches) > 1:
            raise AmbiguousModelName(name, [i[:16] for i in matches])
        if not matches:
            raise ModelNotFound(name)
        return matches[0]

    def _entry(self, index: Index, model_id: str) -> ModelEntry:
        try:
            record = index["models"][model_id]
            return ModelEntry(
                id=model_id,
                tags=sorted(t for t, i in index["tags"].items() if i == model_id),
                path=self._blob_path(model_id),
                size=record["size"],
                created=record["created"],
                metadata=GGUFMetadata.model_validate(record["metadata"]),
            )
        except (KeyError, TypeError, ValidationError) as exc:
            raise StoreError(f"{self.index_path}: corrupt entry for {model_id[:12]}") from exc

    def _install_blob(self, index: Index, model_id: str, staged: Path, meta: GGUFMetadata) -> None:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        blob = self._blob_path(model_id)
        os.replace(staged, blob)
        index["models"][model_id] = record(blob.stat().st_size, int(time.time()), meta)

    def _delete_blobs(self, model_ids: list[str]) -> None:
        for model_id in model_ids:
            self._blob_path(model_id).unlink(missing_ok=True)

    def _blob_path(self, model_id: str) -> Path:
        return self.blobs_dir / f"sha256-{check_model_id(model_id)}.gguf"

    def _blob_ok(self, model_id: str) -> bool:
        blob = self._blob_path(model_id)
        # A symlink (or a symlinked blobs/ dir) could point anywhere; only real files count.
        return not blob.is_symlink() and blob.is_file() and blob.resolve() == blob

    def _check_blob(self, entry: ModelEntry) -> None:
        if not self._blob_ok(entry.id):
            raise ModelFileMissing(
                f"model {entry.name} ({entry.short_id}): file {entry.path} is missing or not a "
                f"regular file inside the store; remove it with `runner models rm {entry.name}` "
                "and add it again"
            )
        size = entry.path.stat().st_size
        if size != entry.size:
            raise ModelFileMissing(
                f"model {entry.name} ({entry.short_id}): file {entry.path} changed on disk "
                f"({size} bytes, expected {entry.size}); remove and add it again"
            )

    @staticmethod
    def _try_link(src: Path, dest: Path) -> bool:
        with contextlib.suppress(OSError):  # EXDEV (other filesystem), EPERM, ...
            os.link(src, dest)
            return True
        return False

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (for callers doing several operations atomically)."""
        with self._lock():
            yield
