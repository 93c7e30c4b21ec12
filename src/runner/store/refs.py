"""What a pull reference names: an OCI artifact, a Hugging Face repo file, or an HTTPS URL.

The spellings are Docker Model Runner's:

    gemma3                              docker.io/ai/gemma3:latest
    ai/gemma3:270M-Q4_K_M               docker.io/ai/gemma3:270m-q4_k_m
    registry.example.com:5000/team/m:t  that registry (the first component has '.' or ':')
    ai/gemma3@sha256:<64 hex>           a manifest by digest
    hf.co/ORG/REPO[:QUANT]              a GGUF in a Hugging Face repo (huggingface.co too)
    https://host/path/model.gguf        any file; `#sha256=<hex>` pins its digest

Each source also knows the local name (store tag) it is saved under.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .digests import is_sha256_hex
from .errors import InvalidModelName
from .names import DEFAULT_ORG, DEFAULT_TAG, normalize

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_HF_HOSTS = {"hf.co", "huggingface.co"}
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HF_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class OciSource:
    """An artifact in an OCI registry: `registry/repository` plus a tag or a digest."""

    registry: str
    repository: str
    tag: str
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes in `/v2/<repo>/manifests/<reference>`."""
        return self.digest or self.tag

    @property
    def local_name(self) -> str:
        prefix = "" if self.registry == DOCKER_HUB else f"{self.registry}/"
        # A digest-only pull has no tag; name it after the digest so it can be listed/removed.
        tag = self.tag if self.tag else f"sha256-{self.digest[7:19]}"  # type: ignore[index]
        return normalize(f"{prefix}{self.repository}:{tag}")

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        at = f"@{self.digest}" if self.digest else ""
        return f"{self.registry}/{self.repository}{tag}{at}"


@dataclass(frozen=True)
class HfSource:
    """GGUF file(s) in a Hugging Face model repo; `quant` picks the file (None: the default)."""

    repo_id: str
    quant: str | None = None
    revision: str = "main"

    @property
    def local_name(self) -> str:
        return normalize(f"hf.co/{self.repo_id}:{self.quant or DEFAULT_TAG}")

    def __str__(self) -> str:
        return f"hf.co/{self.repo_id}" + (f":{self.quant}" if self.quant else "")


@dataclass(frozen=True)
class UrlSource:
    """One GGUF at an HTTP(S) URL, optionally pinned to a sha256 hex digest."""

    url: str
    sha256: str | None = None

    @property
    def local_name(self) -> str:
        path = unquote(urlsplit(self.url).path)
        stem = path.rsplit("/", 1)[-1].removesuffix(".gguf").lower()
        stem = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._") or "model"
        return normalize(stem)

    def __str__(self) -> str:
        return self.url


Source = OciSource | HfSource | UrlSource


def _invalid(ref: str, reason: str) -> InvalidModelName:
    return InvalidModelName(f"invalid model reference {ref!r}: {reason}")


def parse_source(ref: str, *, sha256: str | None = None) -> Source:
    """Parse a pull reference; raises InvalidModelName with the reason."""
    if not isinstance(ref, str) or not ref.strip():
        raise _invalid(str(ref), "empty")
    raw = ref.strip()
    if sha256 is not None and not is_sha256_hex(sha256.lower().removeprefix("sha256:")):
        raise _invalid(raw, "sha256 must be 64 hex characters")
    pinned = sha256.lower().removeprefix("sha256:") if sha256 else None
    if re.match(r"^https?://", raw, re.IGNORECASE):
        return _parse_url(raw, pinned)
    if pinned:
        raise _invalid(raw, "a sha256 can only be given for a URL (registries pin by @sha256:)")
    host = raw.split("/", 1)[0].lower()
    if host in _HF_HOSTS and "/" in raw:
        return _parse_hf(raw, raw.split("/", 1)[1])
    return _parse_oci(raw)


def _parse_url(raw: str, sha256: str | None) -> UrlSource:
    url, _, fragment = raw.partition("#")
    if fragment:
        key, _, value = fragment.partition("=")
        if key.lower() != "sha256" or not is_sha256_hex(value.lower()):
            raise _invalid(raw, "the only URL fragment understood is #sha256=<64 hex>")
        if sha256 and sha256 != value.lower():
            raise _invalid(raw, "two different sha256 digests given")
        sha256 = value.lower()
    parts = urlsplit(url)
    if not parts.hostname:
        raise _invalid(raw, "URL without a host")
    return UrlSource(url, sha256)


def _parse_hf(raw: str, rest: str) -> HfSource:
    repo_id, quant = rest, None
    if ":" in rest:
        repo_id, quant = rest.rsplit(":", 1)
        if not _HF_QUANT.match(quant):
            raise _invalid(raw, f"bad quantization tag {quant!r}")
        if quant.lower() == DEFAULT_TAG:
            quant = None
    if not _HF_REPO.match(repo_id):
        raise _invalid(raw, "expected hf.co/ORG/REPO[:QUANT]")
    return HfSource(repo_id, quant)


def _parse_oci(raw: str) -> OciSource:
    name, digest = raw, None
    if "@" in raw:
        name, digest = raw.split("@", 1)
        digest = digest.lower()
        if not (digest.startswith("sha256:") and is_sha256_hex(digest[7:])):
            raise _invalid(raw, "a digest is @sha256:<64 hex characters>")
    lowered = name.lower()
    first, sep, rest = lowered.partition("/")
    # Docker's rule: the first component is a registry host if it looks like one.
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, lowered
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    repo, tag = path, ""
    head, colon, tail = path.rpartition(":")
    if colon and "/" not in tail:
        repo, tag = head, tail
    if not tag and not digest:
        tag = DEFAULT_TAG
    if "/" not in repo and registry == DOCKER_HUB:
        repo = f"{DEFAULT_ORG}/{repo}"
    source = OciSource(registry, repo, tag, digest)
    try:
        source.local_name  # noqa: B018 -- validates every component with the store's rules
    except InvalidModelName as exc:
        raise _invalid(raw, str(exc).split(": ", 1)[-1]) from exc
    return source
