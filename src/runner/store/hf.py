"""Pulls from Hugging Face (`hf.co/ORG/REPO[:QUANT]`), over the Hub's HTTP API.

The repo's file list (`/api/models/REPO/revision/REV?blobs=true`: each file's size and each
LFS file's sha256) picks the GGUF: the one whose name carries QUANT as a separate token
(`model-Q4_K_M.gguf`, `model.q8_0.gguf`), or without a QUANT the default, as Docker Model
Runner does: Q4_K_M if there is one, else Q4_0, else Q8_0, else the first GGUF by name.
Projector files (`mmproj`) are never picked.

The file comes from `/REPO/resolve/COMMIT/FILE` (the Hub redirects to its CDN) through the
same resumable download as registry blobs (`download.fetch_verified`): into the store's
`tmp/`, never more bytes than the listing declared, and into the store only after its sha256
matches the listed one. The listing is read with a size cap while it streams in, and its
file names must stay inside the repo. `HF_TOKEN` (or the token `hf auth login` saved) goes to
the endpoint only, never across a redirect to another host; `HF_ENDPOINT` names a mirror;
`HF_HUB_OFFLINE` refuses to pull. An endpoint on a loopback or private address needs the
`allow_private_pulls` setting.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from ..config import Settings
from .digests import MalformedDigest, is_sha256_hex, safe_remote_path
from .download import fetch_verified, raise_for_status, read_capped
from .errors import (
    PullError,
    RemoteNotFound,
    RemoteUnauthorized,
    RemoteUnreachable,
    UnsupportedArtifact,
)
from .index import ModelEntry
from .netguard import AddressPolicy, guarded_client
from .refs import HfSource
from .staging import (
    PullProgress,
    PullProgressFn,
    blob_progress,
    install_or_tag,
    install_shards,
    staging_path,
)
from .store import ModelStore

DEFAULT_QUANTS = ("Q4_K_M", "Q4_0", "Q8_0")
MAX_LISTING_BYTES = 32 << 20  # a repo of thousands of files lists in a few MB
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_COMMIT = re.compile(r"[0-9a-f]{40}")
_OFF = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubFile:
    name: str
    sha256: str | None  # LFS files only
    size: int | None


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _token() -> str | None:
    try:
        from huggingface_hub import get_token  # HF_TOKEN, or what `hf auth login` saved

        return get_token()
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_TOKEN") or None


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


def _raise_for_hub(response: httpx.Response, what: str) -> None:
    """The Hub's errors, told apart by its `X-Error-Code` header."""
    if response.status_code < 400:
        return
    code = response.headers.get("x-error-code", "")
    if code == "RepoNotFound" or (response.status_code == 401 and not code):
        raise RemoteNotFound(f"{what}: no such repo (or it is private: set HF_TOKEN)")
    if code == "GatedRepo":
        raise RemoteUnauthorized(f"{what}: gated repo; accept its terms and set HF_TOKEN")
    if code in ("RevisionNotFound", "EntryNotFound"):
        raise RemoteNotFound(f"{what}: not found ({code})")
    if response.status_code in (401, 403):
        raise RemoteUnauthorized(f"{what}: access denied ({response.status_code}); set HF_TOKEN")
    raise_for_status(response, what)


def _listing(client: httpx.Client, source: HfSource, what: str) -> tuple[str, dict[str, HubFile]]:
    """(commit, files by name) of the repo at the source's revision."""
    revision = quote(source.revision, safe="")
    url = f"{_endpoint()}/api/models/{source.repo_id}/revision/{revision}"
    try:
        with client.stream("GET", url, params={"blobs": "true"}) as response:
            _raise_for_hub(response, what)
            body = read_capped(response, MAX_LISTING_BYTES, what)
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise RemoteUnreachable(f"{what}: cannot reach the Hub ({reason}); offline?") from exc
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("siblings"), list):
        raise PullError(f"{what}: the Hub's answer is not a file listing")
    commit = data.get("sha")
    commit = commit if isinstance(commit, str) and _COMMIT.fullmatch(commit) else None
    files: dict[str, HubFile] = {}
    for raw in data["siblings"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("rfilename"), str):
            continue
        lfs = raw.get("lfs") if isinstance(raw.get("lfs"), dict) else {}
        sha = lfs.get("sha256")
        sha = sha.lower() if isinstance(sha, str) and sha else None
        size = lfs.get("size", raw.get("size"))
        size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
        files[raw["rfilename"]] = HubFile(raw["rfilename"], sha, size)
    return commit or source.revision, files


def pull_hf(
    store: ModelStore, source: HfSource, name: str, emit: PullProgressFn, settings: Settings
) -> tuple[ModelEntry, int]:
    what = str(source)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFF:
        raise RemoteUnreachable(f"{what}: cannot reach the Hub (HF_HUB_OFFLINE is set)")
    token = _token()
    policy = AddressPolicy(allow_private=settings.allow_private_pulls)
    client = guarded_client(
        policy,
        follow_redirects=True,  # to the Hub's CDN; httpx drops the token on another host
        timeout=httpx.Timeout(30.0, read=120.0),
        headers={"User-Agent": "runner", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with client:
        commit, files = _listing(client, source, what)
        chosen = [files[f] for f in choose_files(list(files), source.quant, source.repo_id)]
        for file in chosen:
            safe_remote_path(file.name, what)
            if file.sha256 is not None and not is_sha256_hex(file.sha256):
                raise MalformedDigest(f"{what} {file.name}: the listed sha256 is not a digest")

        def fetch(file: HubFile) -> Path:
            """Download one file into its staging path, checked against the listed sha256."""
            url = f"{_endpoint()}/{source.repo_id}/resolve/{commit}/{quote(file.name)}"
            key = (
                file.sha256
                or "hf-"
                + hashlib.sha256(f"{source.repo_id}/{commit}/{file.name}".encode()).hexdigest()
            )
            partial = staging_path(store, key)
            fetch_verified(
                lambda headers: client.stream("GET", url, headers=headers),
                partial,
                expected_sha256=file.sha256,
                size=file.size,
                what=f"{what} {file.name}",
                progress=blob_progress(emit, file.sha256 or key[3:]),
            )
            return partial

        if len(chosen) > 1:
            if not all(file.sha256 for file in chosen):
                raise UnsupportedArtifact(f"{what}: the Hub lists no sha256 for every shard")
            shards = [(str(file.sha256), file.size or 0) for file in chosen]
            return install_shards(store, name, shards, lambda i: fetch(chosen[i]), emit)
        file = chosen[0]
        if file.sha256:
            fetch_one = lambda: fetch(file)  # noqa: E731
            return install_or_tag(store, name, file.sha256, file.size or 0, fetch_one, emit)
        # A non-LFS file: its digest is known only once it is here.
        staged = fetch(file)
        from .fileio import sha256_file

        model_id = sha256_file(staged)
        emit(PullProgress("verifying sha256 digest"))
        if store.has_model(model_id):
            staged.unlink(missing_ok=True)
            return store.tag(name, model_id), file.size or 0
        return store.install(name, staged, model_id), file.size or 0
