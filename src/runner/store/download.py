"""Resumable, verified downloads into the store's staging dir.

A blob is fetched into `tmp/<key>.partial`. If the connection drops, the bytes so far stay
there and the next attempt (a retry here, or the next pull) asks for the rest with `Range`.
Only a file whose sha256 matches the expected digest leaves this module; a mismatch, or a
full disk, deletes the partial file, so nothing half-written survives a failed pull.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from .errors import DigestMismatch, DiskFull, PullError, RemoteUnreachable
from .fileio import CHUNK

try:  # POSIX: two pulls of the same blob must not write one partial file together
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

OpenStream = Callable[[dict[str, str]], contextlib.AbstractContextManager[httpx.Response]]
"""Opens a streamed GET with the given extra headers (used for `Range`)."""

BytesProgress = Callable[[int, int], None]

RETRIES = 3
NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Turn an HTTP error status into the matching PullError."""
    from .errors import RemoteForbidden, RemoteNotFound, RemoteRateLimited, RemoteUnauthorized

    status = response.status_code
    if status < 400:
        return
    if status == 401:
        # Docker Hub answers 401, not 404, for a repository that does not exist.
        raise RemoteUnauthorized(
            f"{what}: access denied (401); the model does not exist or needs credentials "
            "(docker login, or RUNNER_REGISTRY_HOST with RUNNER_REGISTRY_USERNAME / "
            "RUNNER_REGISTRY_PASSWORD)"
        )
    if status == 403:
        raise RemoteForbidden(f"{what}: access denied (403); no access with these credentials")
    if status == 404:
        raise RemoteNotFound(f"{what}: not found (404)")
    if status == 429:
        raise RemoteRateLimited(f"{what}: rate limited by the remote (429); try again later")
    raise PullError(f"{what}: the remote answered {status}")


def unreachable(what: str, exc: Exception) -> RemoteUnreachable:
    reason = str(exc) or type(exc).__name__
    return RemoteUnreachable(f"{what}: cannot reach the remote ({reason}); are you offline?")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # The lock file stays: unlinking it would let a waiter and a newcomer lock different files.
    with path.with_suffix(".lock").open("a") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def in_use(partial: Path) -> bool:
    """Whether a pull is writing `partial` now (it holds the partial's lock)."""
    lock = partial.with_suffix(".lock")
    if fcntl is None or not lock.exists():
        return False
    try:
        with lock.open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _check_space(partial: Path, size: int | None, what: str) -> None:
    """Fail before downloading what cannot fit (what an earlier attempt left stays)."""
    if size is None:
        return
    need = size - (partial.stat().st_size if partial.exists() else 0)
    free = shutil.disk_usage(partial.parent).free
    if need > free:
        raise DiskFull(
            f"{what}: no space left for the download ({need / 1e6:.1f} MB needed, "
            f"{free / 1e6:.1f} MB free in the store)"
        )


def fetch_verified(
    open_stream: OpenStream,
    partial: Path,
    *,
    expected_sha256: str | None,
    size: int | None,
    what: str,
    progress: BytesProgress | None = None,
    retries: int | None = None,
) -> str:
    """Download into `partial` (resuming what is there); returns the sha256 hex.

    With `expected_sha256` a mismatch deletes the file and raises DigestMismatch.
    """
    retries = RETRIES if retries is None else retries
    partial.parent.mkdir(parents=True, exist_ok=True)
    with _locked(partial):
        _check_space(partial, size, what)
        # Bytes left by an earlier attempt are trusted only until the digest is checked: if
        # a resumed file does not match, it is downloaded once more from scratch.
        resumed = partial.exists() and partial.stat().st_size > 0
        while True:
            try:
                _download(open_stream, partial, size, what, progress, retries)
            except _TooLong:
                partial.unlink(missing_ok=True)
                raise PullError(
                    f"{what}: the remote sent more than the {size} bytes it declared; "
                    "the download was discarded"
                ) from None
            digest = _sha256(partial)
            if not expected_sha256 or digest == expected_sha256:
                return digest
            partial.unlink(missing_ok=True)
            if not resumed:
                raise DigestMismatch(
                    f"{what}: sha256 mismatch (got {digest}, expected {expected_sha256}); "
                    "the download was discarded"
                )
            resumed = False


def _download(
    open_stream: OpenStream,
    partial: Path,
    size: int | None,
    what: str,
    progress: BytesProgress | None,
    retries: int,
) -> None:
    """`_fetch_once`, resumed after dropped connections up to `retries` times."""
    attempt = 0
    while True:
        try:
            _fetch_once(open_stream, partial, size, what, progress)
            return
        except (httpx.TransportError, _ShortRead) as exc:
            attempt += 1
            if attempt > retries:
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise unreachable(what, exc) from exc
                raise PullError(
                    f"{what}: download interrupted ({exc or type(exc).__name__}); "
                    "run the pull again to resume"
                ) from exc
            time.sleep(min(0.2 * 2**attempt, 2.0))
        except OSError as exc:
            if exc.errno in NO_SPACE:
                partial.unlink(missing_ok=True)
                reason = exc.strerror or "no space"
                raise DiskFull(f"{what}: no space left for the download ({reason})") from exc
            raise


class _ShortRead(Exception):
    """The server closed the body before `size` bytes arrived."""


class _TooLong(Exception):
    """The server sent more than the `size` bytes that were declared for the blob."""


def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """A small body (manifest, config, API answer), read while it streams in and refused as
    soon as it passes `limit` bytes: never held whole first and measured after."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PullError(f"{what}: the answer is larger than {limit} bytes")
    body = bytearray()
    for block in response.iter_bytes():
        body += block
        if len(body) > limit:
            raise PullError(f"{what}: the answer is larger than {limit} bytes")
    return bytes(body)


def _fetch_once(
    open_stream: OpenStream,
    partial: Path,
    size: int | None,
    what: str,
    progress: BytesProgress | None,
) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        partial.unlink()
        have = 0
    if size is not None and have == size:
        if progress:
            progress(have, size)
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    with open_stream(headers) as response:
        if response.status_code == 416 and have:  # our partial file is already complete
            return
        raise_for_status(response, what)
        if response.status_code != 206:
            have = 0  # the server ignored Range: start over
        total = size
        if total is None:
            length = response.headers.get("content-length")
            total = have + int(length) if length and length.isdigit() else 0
        with partial.open("r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            done = have
            # As received: a chunk buffer would lose the bytes before a cut connection.
            for block in response.iter_bytes():
                if size is not None and done + len(block) > size:
                    raise _TooLong  # a layer is exactly what its manifest declared, no more
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, max(total, done))
            out.flush()
            os.fsync(out.fileno())
    if size is not None and done < size:
        raise _ShortRead(f"got {done} of {size} bytes")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
