"""Shared fixtures.

Store fixtures (issue 2): `models_dir`, `bundled_model_path`, `empty_models_dir`,
`make_gguf`, `runner_env`. The bundled 250 MB model is materialized once into a cache dir
reused across runs (`RUNNER_TEST_MODELS_DIR`, default `~/.cache/runner-test/models`); tests
must not mutate that store -- use `empty_models_dir` for anything that adds or removes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from runner.store import BUNDLED_TAGS, ModelStore


def _shared_models_dir() -> Path:
    configured = os.environ.get("RUNNER_TEST_MODELS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "runner-test" / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """A store holding the bundled `ai/gemma3:270m`; shared across runs, treat as read-only."""
    root = _shared_models_dir()
    ModelStore(root).ensure_default()  # a no-op after the first run
    return root


@pytest.fixture(scope="session")
def bundled_model_path(models_dir: Path) -> Path:
    """Path of the bundled Gemma 3 270M Q4_K_M GGUF inside `models_dir`."""
    return ModelStore(models_dir).get(BUNDLED_TAGS[0]).path


@pytest.fixture
def empty_models_dir(tmp_path: Path) -> Path:
    """A fresh, empty models dir (use with `ModelStore(..., bundled_default=False)`)."""
    return tmp_path / "models"


@pytest.fixture
def runner_env(models_dir: Path) -> dict[str, str]:
    """Environment for `python -m runner` subprocesses pointed at the shared store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["RUNNER_MODELS_DIR"] = str(models_dir)
    return env


def write_tiny_gguf(path: Path, name: str = "tiny", fill: float = 0.0) -> Path:
    """A valid ~1 KB llama-architecture GGUF; different `name`/`fill` give different IDs."""
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name(name)
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.add_token_list(["<s>", "</s>", "a"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_tensor("token_embd.weight", np.full((3, 8), fill, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def make_gguf(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `make_gguf("a")` writes a tiny valid GGUF under tmp_path and returns its path."""

    def make(name: str = "tiny", fill: float = 0.0) -> Path:
        return write_tiny_gguf(tmp_path / f"{name}-{fill}.gguf", name, fill)

    return make
