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
    """Getting a model from a registry, Hugging Face or a URL failed; nothing half-downloaded
    is in the store. The subclasses say why (the API maps each to an HTTP status)."""


class RemoteUnreachable(PullError):
    """No connection to the registry / hub / host (offline, DNS, refused, timed out)."""


class RemoteNotFound(PullError):
    """The registry or hub has no such model, tag, digest or file."""


class RemoteUnauthorized(PullError):
    """The remote refused access (401): missing or wrong credentials, or a gated repo."""


class RemoteForbidden(RemoteUnauthorized):
    """The remote refused access (403): no rights with these credentials."""


class RemoteRateLimited(PullError):
    """The remote asked us to slow down (429)."""


class UnsupportedArtifact(PullError):
    """The remote has the model, but in a form runner cannot serve (no GGUF, split GGUF)."""


class DigestMismatch(PullError):
    """Downloaded bytes do not hash to the digest they were promised to have."""


class DiskFull(PullError):
    """The store's filesystem ran out of space (or a file size limit) while downloading."""


class PullRefused(RemoteForbidden):
    """The pull would connect to an address the server does not pull from (loopback,
    private, link-local, multicast...); the message names the setting that allows it."""


class MalformedDigest(PullError):
    """A remote named a blob by something that is not a sha256 digest (or a file by a name
    that would leave its folder); nothing was written."""
