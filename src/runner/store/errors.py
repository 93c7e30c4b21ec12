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


class PullError(StoreError):
    """Getting a model from a registry, Hugging Face or a URL failed. `status` and `code`
    say how an HTTP API should report it; nothing half-downloaded is in the store."""

    status = 502
    code = "pull_failed"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class RemoteUnreachable(PullError):
    """No connection to the registry / hub / host (offline, DNS, refused, timed out)."""

    status = 503
    code = "remote_unreachable"


class RemoteNotFound(PullError):
    """The registry or hub has no such model, tag, digest or file."""

    status = 404
    code = "remote_model_not_found"


class RemoteUnauthorized(PullError):
    """The remote refused access (401/403): missing or wrong credentials, or no rights."""

    status = 401
    code = "remote_unauthorized"


class DigestMismatch(PullError):
    """Downloaded bytes do not hash to the digest they were promised to have."""

    code = "digest_mismatch"


class DiskFull(PullError):
    """The store's filesystem ran out of space (or a file size limit) while downloading."""

    status = 507
    code = "disk_full"
