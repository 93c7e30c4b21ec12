"""A small client for the OCI distribution API: manifests and blobs, pull and push.

`https` everywhere except the registries listed in the settings' `insecure_registries`
(`RUNNER_INSECURE_REGISTRIES`, host or host:port), which are spoken to over `http`, as Docker
does for its insecure registries. Only a listed registry may be on a loopback, link-local or
private address (a registry's own blob redirects included). Docker Hub (`docker.io`) is
served by `registry-1.docker.io`. Manifests and configs are read with a size cap while they
stream in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ..config import Settings
from .artifact import DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX
from .digests import oci_digest
from .download import raise_for_status, read_capped, unreachable
from .errors import DigestMismatch, PullError, RemoteUnauthorized
from .fileio import CHUNK
from .netguard import INSECURE_REGISTRIES_SETTING, AddressPolicy, guarded_client
from .refs import DOCKER_HUB, OciSource
from .registry_auth import RegistryAuth, RegistryAuthError, credentials_for, registry_key


def is_insecure(registry: str, settings: Settings) -> bool:
    """Whether the operator listed `registry` (by host:port or by host) as insecure."""
    listed = {registry_key(item) for item in settings.insecure_registries}
    key = registry_key(registry)
    host = key.rsplit(":", 1)[0] if not key.endswith("]") else key
    return key in listed or host in listed


def registry_url(registry: str, settings: Settings) -> str:
    if registry == DOCKER_HUB:
        return "https://registry-1.docker.io"
    return f"{'http' if is_insecure(registry, settings) else 'https'}://{registry}"


class Registry:
    """One registry; use as a context manager (it owns an HTTP connection pool)."""

    def __init__(
        self, registry: str, settings: Settings | None = None, *, timeout: float = 30.0
    ) -> None:
        settings = settings or Settings()
        self.registry = registry
        self.base = registry_url(registry, settings)
        policy = AddressPolicy(
            allow_private=is_insecure(registry, settings),
            setting=f"{INSECURE_REGISTRIES_SETTING} to {registry}",
        )
        credentials = credentials_for(registry, settings)
        self.auth = RegistryAuth(credentials, self.base, policy=policy, timeout=timeout)
        self.client = guarded_client(
            policy,
            auth=self.auth,
            follow_redirects=True,  # blobs are often redirected to a CDN; httpx drops auth there
            timeout=httpx.Timeout(timeout, read=120.0),
            headers={"User-Agent": "runner"},
        )

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.client.request(method, url, **kwargs)
        except RegistryAuthError as exc:
            raise RemoteUnauthorized(f"{what}: {exc}") from exc
        except httpx.TransportError as exc:
            raise unreachable(f"{what} ({self.registry})", exc) from exc

    # ----- pull ----------------------------------------------------------------------------

    def manifest(self, source: OciSource) -> tuple[dict[str, Any], str]:
        """(image manifest, its digest) for `source`; an index is resolved to its first
        manifest. A digest reference is checked against the bytes received."""
        what = f"manifest of {source}"
        reference = source.reference
        for _ in range(2):  # at most one index level, as Docker's model images have
            url = f"{self.base}/v2/{source.repository}/manifests/{reference}"
            response, body = self._get_small(url, what, {"Accept": MANIFEST_ACCEPT})
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if reference.startswith("sha256:") and digest != reference:
                raise DigestMismatch(f"{what}: manifest digest {digest} != {reference}")
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise PullError(f"{what}: the manifest is not JSON") from exc
            if not isinstance(data, dict):
                raise PullError(f"{what}: the manifest is not a JSON object")
            kind = data.get("mediaType") or response.headers.get("content-type", "")
            if kind in (OCI_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in data:
                entries = data.get("manifests") or []
                if not entries or not isinstance(entries[0], dict):
                    raise PullError(f"{what}: an empty image index")
                reference = oci_digest(entries[0].get("digest"), f"{what}: an index entry")
                continue
            return data, digest
        raise PullError(f"{what}: an image index nested in an index")

    def blob_bytes(self, repository: str, digest: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small blob (a config, a chat template), verified against its digest."""
        digest = oci_digest(digest, "blob")
        what = f"blob {digest[:19]}"
        _, body = self._get_small(f"{self.base}/v2/{repository}/blobs/{digest}", what, {}, limit)
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise DigestMismatch(f"{what}: content does not match its digest")
        return body

    def _get_small(
        self, url: str, what: str, headers: dict[str, str], limit: int = MAX_MANIFEST_BYTES
    ) -> tuple[httpx.Response, bytes]:
        """GET a small document, refused as soon as more than `limit` bytes stream in."""
        try:
            with self.client.stream("GET", url, headers=headers) as response:
                raise_for_status(response, what)
                return response, read_capped(response, limit, what)
        except RegistryAuthError as exc:
            raise RemoteUnauthorized(f"{what}: {exc}") from exc
        except httpx.TransportError as exc:
            raise unreachable(f"{what} ({self.registry})", exc) from exc

    @contextlib.contextmanager
    def blob_stream(
        self, repository: str, digest: str, headers: dict[str, str]
    ) -> Iterator[httpx.Response]:
        url = f"{self.base}/v2/{repository}/blobs/{oci_digest(digest, 'blob')}"
        try:
            with self.client.stream("GET", url, headers=headers) as response:
                yield response
        except RegistryAuthError as exc:
            raise RemoteUnauthorized(f"blob {digest[:19]}: {exc}") from exc

    # ----- push ----------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        what = f"blob {digest[:19]}"
        response = self._send("HEAD", f"{self.base}/v2/{repository}/blobs/{digest}", what)
        if response.status_code == 404:
            return False
        raise_for_status(response, what)
        return True

    def upload_blob(
        self,
        repository: str,
        digest: str,
        data: bytes | Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Monolithic upload (POST for a session, then PUT with the bytes); skipped if the
        registry has the blob already."""
        if self.has_blob(repository, digest):
            size = len(data) if isinstance(data, bytes) else data.stat().st_size
            if progress:
                progress(size, size)
            return
        what = f"upload of {digest[:19]} to {self.registry}/{repository}"
        # The POST (no body) also answers the auth challenge, so the PUT's body is sent once.
        response = self._send("POST", f"{self.base}/v2/{repository}/blobs/uploads/", what)
        raise_for_status(response, what)
        location = response.headers.get("location")
        if not location:
            raise PullError(f"{what}: the registry gave no upload location")
        url = httpx.URL(self.base).join(location).copy_merge_params({"digest": digest})
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        content = data if isinstance(data, bytes) else _file_chunks(data, size, progress)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        response = self._send("PUT", str(url), what, content=content, headers=headers)
        raise_for_status(response, what)
        if isinstance(data, bytes) and progress:
            progress(size, size)

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        what = f"manifest {self.registry}/{repository}:{tag}"
        url = f"{self.base}/v2/{repository}/manifests/{tag}"
        headers = {"Content-Type": media_type}
        response = self._send("PUT", url, what, content=body, headers=headers)
        raise_for_status(response, what)
        return "sha256:" + hashlib.sha256(body).hexdigest()


def _file_chunks(
    path: Path, size: int, progress: Callable[[int, int], None] | None
) -> Iterator[bytes]:
    done = 0
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            done += len(block)
            if progress:
                progress(done, size)
            yield block
