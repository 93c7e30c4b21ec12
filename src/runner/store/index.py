"""The shape of `index.json` and the records built from it (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .digests import is_sha256_hex
from .errors import StoreError
from .gguf_meta import GGUFMetadata

INDEX_VERSION = 1

Index = dict[str, Any]
"""{"version": 1, "seeded": bool, "tags": {tag: id}, "models": {id: {size, created, metadata}},
"configs": {tag: {...}}}"""


class ModelEntry(BaseModel):
    """One model (one blob) with every tag that points at it."""

    id: str
    tags: list[str]
    path: Path
    size: int
    created: int
    metadata: GGUFMetadata

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def name(self) -> str:
        """Primary name: the first tag, or the short ID of an untagged model."""
        return self.tags[0] if self.tags else self.short_id


@dataclass(frozen=True)
class Removed:
    """Result of `ModelStore.remove`: which tags went and whether the blob went too."""

    id: str
    untagged: list[str] = field(default_factory=list)
    deleted: bool = False


def check_model_id(model_id: str) -> str:
    """`model_id` if it is a full sha256 hex digest; it becomes part of file names."""
    if not is_sha256_hex(model_id):
        raise StoreError(f"invalid model id {model_id!r}: expected 64 hex characters")
    return model_id


def empty_index() -> Index:
    return {"version": INDEX_VERSION, "seeded": False, "tags": {}, "models": {}, "configs": {}}


def validate_index(raw: Any, where: Path) -> Index:
    """Check a loaded index; ids end up in paths, so a tampered one must not get through."""
    if not isinstance(raw, dict) or raw.get("version") != INDEX_VERSION:
        raise StoreError(f"{where}: unsupported or corrupt store index")
    raw.setdefault("tags", {})
    raw.setdefault("models", {})
    raw.setdefault("configs", {})
    if not all(isinstance(raw[key], dict) for key in ("tags", "models", "configs")):
        raise StoreError(f"{where}: corrupt store index")
    # A config is only ever a name's: one for a name the index lacks is dropped.
    raw["configs"] = {
        tag: config
        for tag, config in raw["configs"].items()
        if tag in raw["tags"] and isinstance(config, dict)
    }
    for model_id in [*raw["models"], *raw["tags"].values()]:
        if not is_sha256_hex(model_id):
            raise StoreError(f"{where}: corrupt store index (bad id {model_id!r})")
    return raw


def record(size: int, created: int, meta: GGUFMetadata) -> dict[str, Any]:
    return {
        "size": size,
        "created": created,
        "metadata": meta.model_dump(mode="json", exclude={"has_chat_template"}),
    }


def retag(index: Index, tag: str, model_id: str) -> list[str]:
    """Point `tag` at `model_id`; returns the ids of models left with no tags (to delete)."""
    old = index["tags"].get(tag)
    index["tags"][tag] = model_id
    if old != model_id:  # the name means another file now: its settings were for the old one
        index["configs"].pop(tag, None)
    if old and old != model_id and old not in index["tags"].values():
        index["models"].pop(old, None)
        return [old]
    return []


def untag(index: Index, tags: list[str], model_id: str) -> list[str]:
    """Drop `tags`; returns [model_id] if that left the model with no tags (to delete)."""
    for tag in tags:
        index["tags"].pop(tag, None)
        index["configs"].pop(tag, None)
    if model_id in index["tags"].values():
        return []
    index["models"].pop(model_id, None)
    return [model_id]
