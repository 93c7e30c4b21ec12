"""Errors raised by the model store; every one is a `StoreError` with a one-line message."""

from __future__ import annotations

from collections.abc import Sequence


class StoreError(Exception):
    """Base class: catch this to report any store problem as a clean one-line error."""


class InvalidModelName(StoreError, ValueError):
    """A model reference that is empty, malformed or tries to escape the store."""


class ModelNotFound(StoreError, LookupError):
    """No model in the store matches the reference."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} not found")
        self.name = name


class AmbiguousModelName(StoreError, LookupError):
    """A partial reference that matches more than one model; `candidates` lists them."""

    def __init__(self, name: str, candidates: Sequence[str]) -> None:
        self.name = name
        self.candidates = sorted(candidates)
        super().__init__(
            f"model name {name!r} is ambiguous; did you mean one of: {', '.join(self.candidates)}"
        )


class InvalidModelFile(StoreError, ValueError):
    """The file is not a readable GGUF model (wrong magic, truncated, corrupt)."""


class ModelFileMissing(StoreError, FileNotFoundError):
    """The index names a blob that is gone (or was swapped for something unsafe)."""
