"""Docker Model Runner style model names: `[org/]repo[:tag]`, lowercase, `ai/` and `:latest` default.

`gemma3` -> `ai/gemma3:latest`; `hf.co/Org/Model:Q4` -> `hf.co/org/model:q4`. Names never map
to file paths (blobs are content-addressed), but are still validated strictly so that a name
can't smuggle `..`, absolute paths or control characters into logs, JSON or the index.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import AmbiguousModelName, InvalidModelName, ModelNotFound

DEFAULT_ORG = "ai"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 256

_COMPONENT = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$")
_HOST = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?(?::[0-9]{1,5})?$")  # registry[:port]
_TAG = re.compile(r"^[a-z0-9_][a-z0-9._-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]{12,64}$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed, normalized reference. `explicit_*` record what the user actually typed,
    which partial resolution needs (a defaulted tag may match any tag, a typed one may not)."""

    repo: str
    tag: str
    explicit_org: bool = True
    explicit_tag: bool = True

    def __str__(self) -> str:
        return f"{self.repo}:{self.tag}"

    @property
    def basename(self) -> str:
        return self.repo.rsplit("/", 1)[-1]


def _invalid(name: str, reason: str) -> InvalidModelName:
    return InvalidModelName(f"invalid model name {name!r}: {reason}")


def parse(name: str) -> ModelRef:
    """Validate and normalize `name`; raises `InvalidModelName` with the reason."""
    if not isinstance(name, str):
        raise InvalidModelName(f"model name must be a string, not {type(name).__name__}")
    raw = name.strip()
    if not raw:
        raise _invalid(name, "empty")
    if len(raw) > MAX_NAME_LENGTH:
        raise _invalid(name, f"longer than {MAX_NAME_LENGTH} characters")
    if raw.startswith(("/", "~")) or "\\" in raw or re.match(r"^[A-Za-z]:[/\\]", raw):
        raise _invalid(name, "looks like a file path; use `models add NAME PATH` to import a file")
    lowered = raw.lower()

    # The tag is whatever follows the last ':' *after* the last '/' (a ':' before it is a port).
    repo, tag, explicit_tag = lowered, DEFAULT_TAG, False
    head, sep, tail = lowered.rpartition(":")
    if sep and "/" not in tail:
        repo, tag, explicit_tag = head, tail, True
        if not _TAG.match(tag):
            raise _invalid(name, f"bad tag {tag!r} (letters, digits, '.', '_', '-')")

    parts = repo.split("/")
    for i, part in enumerate(parts):
        if part in ("", ".", ".."):
            raise _invalid(name, "empty, '.' or '..' path component")
        pattern = _HOST if i == 0 and len(parts) > 1 else _COMPONENT
        if not pattern.match(part):
            bad = sorted({c for c in part if not (c.isalnum() and c.isascii()) and c not in "._-:"})
            why = f"invalid character(s) {''.join(bad)!r}" if bad else "bad punctuation"
            raise _invalid(name, f"{why} in {part!r}")

    explicit_org = len(parts) > 1
    if not explicit_org:
        repo = f"{DEFAULT_ORG}/{repo}"
    return ModelRef(repo, tag, explicit_org, explicit_tag)


def normalize(name: str) -> str:
    """Canonical `org/repo:tag` form of `name` (lowercased, defaults filled in)."""
    return str(parse(name))


def split(name: str) -> tuple[str, str]:
    """(repo, tag) of an already-normalized name."""
    repo, _, tag = name.rpartition(":")
    return repo, tag


def id_prefix(ref: str) -> str | None:
    """The hex digest if `ref` looks like a model ID (`sha256:<hex>` or 12-64 bare hex chars)."""
    text = ref.strip().lower().removeprefix("sha256:")
    return text if _HEX.match(text) else None


def _pick(name: str, candidates: list[str]) -> str | None:
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    repos = {split(c)[0] for c in candidates}
    latest = f"{next(iter(repos))}:{DEFAULT_TAG}"
    if len(repos) == 1 and latest in candidates:
        return latest
    raise AmbiguousModelName(name, candidates)


def resolve(name: str, available: Iterable[str]) -> str:
    """The one name in `available` (normalized names) that `name` refers to.

    Exact match first. A name typed without a tag then matches any tag of that repo
    (`gemma3` -> `ai/gemma3:270m`, preferring `:latest`); a name typed without an org also
    matches the same repo under any org (`smollm2` -> `hf.co/x/smollm2:q4`). More than one
    candidate at a stage raises `AmbiguousModelName`; none at all raises `ModelNotFound`.
    """
    ref = parse(name)
    names = sorted(set(available))
    if str(ref) in names:
        return str(ref)
    stages: list[list[str]] = []
    if not ref.explicit_tag:
        stages.append([n for n in names if split(n)[0] == ref.repo])
    if not ref.explicit_org:
        stages.append(
            [
                n
                for n in names
                if split(n)[0].rsplit("/", 1)[-1] == ref.basename
                and (not ref.explicit_tag or split(n)[1] == ref.tag)
            ]
        )
    for candidates in stages:
        found = _pick(name, candidates)
        if found:
            return found
    raise ModelNotFound(name)
