"""A small client for the OCI distribution API: manifests and blobs, pull and push.

`https` everywhere except loopback registries (`localhost`, `127.0.0.1`, `[::1]`) and hosts
listed in `RUNNER_INSECURE_REGISTRIES` (comma-separated), which are spoken to over `http`,
as Docker does for its insecure registries. Docker Hub (`docker.io`) is served by
`registry-1.docker.io`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from .artifact import DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX
from .download import raise_for_status, unreachable
from .errors import DigestMismatch, PullError, RemoteUnauthorized
from .fileio import CHUNK
from .refs import DOCKER_HUB, OciSource
from .registry_auth import RegistryAuth, RegistryAuthError, credentials_for

_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def registry_url(registry: str) -> str:
    if registry == DOCKER_HUB:
        return "https://registry-1.docker.io"
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    insecure = {
        h.strip().lower()
        for h in os.environ.get("RUNNER_INSECURE_REGISTRIES", "").split(",")
        if h.strip()
    }
    plain = host in _LOOPBACK or registry in insecure or host in insecure
    return f"{'http' if plain else 'https'}://{registry}"


class Registry:
    """One registry; use as a context manager (it owns an HTTP connection pool)."""

    def __init__(self, registry: str, *, timeout: float = 30.0) -> None:
        self.registry = registry
        self.base = registry_url(registry)
        self.auth = RegistryAuth(credentials_for(registry), timeout=timeout)
        self.client = httpx.Client(
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
            response = self._send("GET", url, what, headers={"Accept": MANIFEST_ACCEPT})
            raise_for_status(response, what)
            body = response.content
            if len(body) > MAX_MANIFEST_BYTES:
                raise PullError(f"{what}: manifest too large ({len(body)} bytes)")
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
                reference = str(entries[0].get("digest", ""))
                continue
            return data, digest
        raise PullError(f"{what}: an image index nested in an index")

    def blob_bytes(self, repository: str, digest: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small blob (a config, a chat template), verified against its digest."""
        what = f"blob {digest[:19]}"
        response = self._send("GET", f"{self.base}/v2/{repository}/blobs/{digest}", what)
        raise_for_status(response, what)
        if len(response.content) > limit:
            raise PullError(f"{what}: larger than {limit} bytes")
        if "sha256:" + hashlib.sha256(response.content).hexdigest() != digest:
            raise DigestMismatch(f"{what}: content does not match its digest")
        return response.content

    @contextlib.contextmanager
    def blob_stream(
        self, repository: str, digest: str, headers: dict[str, str]
    ) -> Iterator[httpx.Response]:
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
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
