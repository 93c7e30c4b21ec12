"""Pulls from Hugging Face (`hf.co/ORG/REPO[:QUANT]`) through `huggingface_hub`.

The repo's file list (with each LFS file's sha256) picks the GGUF: the one whose name
carries QUANT as a separate token (`model-Q4_K_M.gguf`, `model.q8_0.gguf`), or without a
QUANT the default, as Docker Model Runner does: Q4_K_M if there is one, else Q4_0, else
Q8_0, else the first GGUF by name. Projector files (`mmproj`) are never picked.

`hf_hub_download` does the transfer (resumable; `HF_TOKEN` for gated repos; `HF_ENDPOINT`
for a mirror; `HF_HUB_OFFLINE`), into the store's `tmp/`; the file enters the store only
after its sha256 matches the one the Hub lists.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import (
    DigestMismatch,
    DiskFull,
    PullError,
    RemoteForbidden,
    RemoteNotFound,
    RemoteUnauthorized,
    RemoteUnreachable,
    UnsupportedArtifact,
)
from .fileio import sha256_file
from .index import ModelEntry
from .pull import (
    PullProgress,
    PullProgressFn,
    blob_progress,
    install_or_tag,
    install_shards,
    staging_path,
)
from .refs import HfSource
from .store import ModelStore

DEFAULT_QUANTS = ("Q4_K_M", "Q4_0", "Q8_0")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _has_quant(filename: str, quant: str) -> bool:
    stem = filename.rsplit("/", 1)[-1]
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9]|_[A-Za-z0-9])"
    return re.search(pattern, stem, re.IGNORECASE) is not None


def choose_files(files: list[str], quant: str | None, repo: str) -> list[str]:
    """The GGUF to pull among the repo's `files`: one file, or every shard of a split one
    (in order). Raises RemoteNotFound when nothing fits, UnsupportedArtifact for a
    split GGUF with shards missing."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    if not ggufs:
        raise RemoteNotFound(f"hf.co/{repo}: the repo has no GGUF file")
    wanted = [quant] if quant else [*DEFAULT_QUANTS, None]
    for candidate in wanted:
        matches = ggufs if candidate is None else [f for f in ggufs if _has_quant(f, candidate)]
        if matches:
            break
    else:
        found = ", ".join(f.rsplit("/", 1)[-1] for f in ggufs)
        raise RemoteNotFound(f"hf.co/{repo}: no GGUF file for quantization {quant} (has: {found})")
    pick = matches[0]
    shard = _SHARD.search(pick)
    if not shard:
        return [pick]
    prefix, count = pick[: shard.start()], int(shard.group(2))
    names = [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    lowered = {f.lower(): f for f in ggufs}
    missing = [n for n in names if n.lower() not in lowered]
    if missing:
        raise UnsupportedArtifact(f"hf.co/{repo}: split GGUF {prefix} lacks {', '.join(missing)}")
    return [lowered[n.lower()] for n in names]


def _bar_class(report: Any) -> type:
    """A tqdm class for `hf_hub_download` that forwards byte counts instead of drawing."""

    class _Forward(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            self._done = int(kwargs.get("initial") or 0)
            self._total = int(kwargs.get("total") or 0)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            report(self._done, max(self._total, self._done))
            return None

    return _Forward


def _translate(exc: Exception, what: str) -> Exception:
    from huggingface_hub import errors

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return DiskFull(f"{what}: no space left for the download ({exc})")
    if isinstance(exc, errors.GatedRepoError):
        return RemoteUnauthorized(f"{what}: gated repo; accept its terms and set HF_TOKEN")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return RemoteNotFound(f"{what}: no such repo (or it is private: set HF_TOKEN)")
    if isinstance(exc, errors.RevisionNotFoundError | errors.EntryNotFoundError):
        return RemoteNotFound(f"{what}: not found ({exc})".splitlines()[0])
    if isinstance(exc, errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError):
        return RemoteUnreachable(f"{what}: cannot reach the Hub (offline?)")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        denied = RemoteUnauthorized if status == 401 else RemoteForbidden
        return denied(f"{what}: access denied ({status}); set HF_TOKEN")
    if isinstance(exc, errors.HfHubHTTPError):
        return PullError(f"{what}: {str(exc).splitlines()[0]}")
    return RemoteUnreachable(f"{what}: cannot reach the Hub ({exc or type(exc).__name__})")


def pull_hf(
    store: ModelStore, source: HfSource, name: str, emit: PullProgressFn
) -> tuple[ModelEntry, int]:
    import httpx
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    failures = (HfHubHTTPError, OfflineModeIsEnabled, httpx.TransportError, OSError)
    what = str(source)
    try:
        info = HfApi(endpoint=_endpoint()).model_info(
            source.repo_id, revision=source.revision, files_metadata=True
        )
    except failures as exc:
        raise _translate(exc, what) from exc
    siblings = {s.rfilename: s for s in info.siblings or []}
    filenames = choose_files(list(siblings), source.quant, source.repo_id)
    workdir = store.tmp_dir / "hf" / re.sub(r"[^A-Za-z0-9._-]", "_", source.repo_id)

    def expected_of(filename: str) -> tuple[str | None, int]:
        lfs = siblings[filename].lfs
        expected = lfs.sha256.lower() if lfs is not None and lfs.sha256 else None
        return expected, (lfs.size if lfs is not None else siblings[filename].size) or 0

    def fetch(filename: str) -> Path:
        """Download one file, check it, move it to the staging path of its digest."""
        expected, _ = expected_of(filename)
        progress = blob_progress(emit, expected or "0" * 64)
        try:
            path = Path(
                hf_hub_download(
                    source.repo_id,
                    filename,
                    revision=info.sha or source.revision,
                    local_dir=workdir,
                    endpoint=_endpoint(),
                    tqdm_class=_bar_class(progress),
                )
            )
        except failures as exc:
            raise _translate(exc, f"{what} {filename}") from exc
        digest = sha256_file(path)
        if expected and digest != expected:
            path.unlink()
            raise DigestMismatch(
                f"{what} {filename}: sha256 mismatch (got {digest}, expected {expected}); "
                "the download was discarded"
            )
        staged = staging_path(store, digest)
        os.replace(path, staged)
        return staged

    expected = [expected_of(f) for f in filenames]
    try:
        if len(filenames) > 1:
            if not all(digest for digest, _ in expected):
                raise UnsupportedArtifact(f"{what}: the Hub lists no sha256 for every shard")
            shards = [(str(digest), size) for digest, size in expected]
            return install_shards(store, name, shards, lambda i: fetch(filenames[i]), emit)
        digest, size = expected[0]
        if digest:
            return install_or_tag(store, name, digest, size, lambda: fetch(filenames[0]), emit)
        staged = fetch(filenames[0])  # a non-LFS file: its digest is known only afterwards
        model_id = staged.name.removeprefix("pull-").removesuffix(".partial")
        emit(PullProgress("verifying sha256 digest"))
        if store.has_model(model_id):
            staged.unlink(missing_ok=True)
            return store.tag(name, model_id), size
        return store.install(name, staged, model_id), size
    finally:
        # huggingface_hub keeps unfinished downloads (to resume) and metadata in the workdir
        if not any(workdir.rglob("*.incomplete")):
            shutil.rmtree(workdir, ignore_errors=True)
