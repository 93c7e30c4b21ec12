"""The one check for digests and remote file names before they become part of a path.

A registry, the Hub or a URL names what it serves; those names end up in file names under the
store (`tmp/pull-<hex>.partial`, `blobs/sha256-<hex>.gguf`) and in URL paths. Only
`sha256:` + 64 lowercase hex digits (or the bare 64 hex) get through, matched whole: a
trailing newline or a `/../` can never ride along.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from .errors import MalformedDigest

__all__ = ["MalformedDigest", "is_sha256_hex", "oci_digest", "safe_remote_path", "sha256_hex"]

_HEX = re.compile(r"[0-9a-f]{64}")
_STAGING_KEY = re.compile(r"(?:[a-z]+-)?[0-9a-f]{64}")


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


def sha256_hex(digest: object, what: str = "digest") -> str:
    """The 64 hex digits of `sha256:<hex>` (or of a bare `<hex>`); MalformedDigest otherwise.

    Upper case is refused rather than folded: the spec's digests are lower case, and a
    folded one would name a different file than the remote meant.
    """
    if isinstance(digest, str):
        hex_part = digest[7:] if digest.startswith("sha256:") else digest
        if _HEX.fullmatch(hex_part):
            return hex_part
    shown = repr(digest)[:40] if isinstance(digest, str) else type(digest).__name__
    raise MalformedDigest(f"{what}: not a sha256 digest ({shown})")


def oci_digest(digest: object, what: str = "digest") -> str:
    """`digest` itself if it is `sha256:<64 lowercase hex>`; MalformedDigest otherwise."""
    if not (isinstance(digest, str) and digest.startswith("sha256:")):
        sha256_hex(None, what)
    return "sha256:" + sha256_hex(digest, what)


def staging_key(key: str) -> str:
    """A key for a file under the store's `tmp/`: 64 hex, optionally after `word-`."""
    if not _STAGING_KEY.fullmatch(key):
        raise MalformedDigest(f"staging key {key[:40]!r} is not a digest")
    return key


def safe_remote_path(name: object, what: str) -> str:
    """A file name from a remote listing (the Hub's `rfilename`) that stays inside its folder:
    relative, `/`-separated, no `.`/`..` parts, no backslashes or control characters."""
    if not isinstance(name, str) or not name or len(name) > 1024:
        raise MalformedDigest(f"{what}: an unusable file name in the listing")
    parts = PurePosixPath(name).parts
    bad = (
        name.startswith("/")
        or "\\" in name
        or any(ord(c) < 32 or c == "\x7f" for c in name)
        or any(part in (".", "..") for part in name.split("/"))
        or not parts
    )
    if bad:
        raise MalformedDigest(f"{what}: a file name that leaves the repo ({name[:60]!r})")
    return name
