"""Shared fixtures.

Store fixtures: `models_dir`, `bundled_model_path`, `empty_models_dir`,
`make_gguf`, `runner_env`. The bundled 250 MB model is materialized once into a cache dir
reused across runs (`RUNNER_TEST_MODELS_DIR`, default `~/.cache/runner-test/models`); tests
must not mutate that store -- use `empty_models_dir` for anything that adds or removes.

API server fixtures: `start_server` (factory of `ServerHandle`s running
`python -m runner serve` in a subprocess) and `server` (one shared, preloaded server).

Layers: every test that requests one of `MODEL_FIXTURES`, directly or through another
fixture, is marked `slow` at collection, so `pytest -m "not slow"` (`make test-fast`) never
loads the model or starts a server, and a new test cannot forget the marker.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest

from runner.store import BUNDLED_TAGS, ModelStore

# The fixtures that reach the real model: the bundled store (materialized on first use), its
# GGUF, and servers (which load it). A fixture built on one of them (an engine, a private
# store, a dialect's server) has it in its closure, so its tests count too.
MODEL_FIXTURES = frozenset({"models_dir", "bundled_model_path", "start_server", "server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` every test whose fixture closure reaches the model or a server."""
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m "not slow"`, skip importing modules marked slow as a whole: importing them
    (Ray, schemathesis, the SDKs) was a good part of the fast layer's time."""
    if collection_path.suffix != ".py" or "not slow" not in (config.option.markexpr or ""):
        return None
    return True if _module_marked_slow(collection_path) else None


def _module_marked_slow(path: Path) -> bool:
    """A top-level `pytestmark` naming `pytest.mark.slow` (read from the source, not run)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
            return any(
                isinstance(n, ast.Attribute) and n.attr == "slow" for n in ast.walk(node.value)
            )
    return False


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


# ----- API server fixtures ------------------------------------------------------------------
#
# `start_server(*args, env=...)` runs `python -m runner serve` in a subprocess on a free port
# against the shared store and returns a `ServerHandle` once `/health` answers (so models
# given with `--model` are loaded). Defaults: `--host 127.0.0.1 --port <free> --threads 1`
# (one thread is several times faster than many on a busy 2-core box), and a fresh prompt
# cache dir per server (`RUNNER_CACHE_DIR`); any of these can be overridden by args/env.
# `handle.restart()` stops it and starts it again with the same port, args and env (same
# cache dir), for persistence tests. Everything still running is stopped at session end.

SERVER_START_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerHandle:
    """A `runner serve` subprocess.

    `url` is the root (`http://127.0.0.1:PORT`), `base_url` the OpenAI base URL
    (`url + "/engines/llama.cpp/v1"`). `stop()` sends SIGTERM and returns the exit code.
    """

    def __init__(self, args: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.args = args
        self.env = env
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/engines/llama.cpp/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = SERVER_START_TIMEOUT) -> ServerHandle:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "serve", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"runner serve exited early:\n{self.logs()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"runner serve not ready after {timeout:.0f}s:\n{self.logs()[-4000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the server and wait; SIGKILL if it does not exit within `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def restart(self, timeout: float = SERVER_START_TIMEOUT) -> ServerHandle:
        self.stop()
        return self.start(timeout=timeout)


@pytest.fixture(scope="session")
def start_server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServerHandle]]:
    """Factory: `start_server("--slots", "1", env={"RUNNER_X": "y"}, wait=True)`."""
    started: list[ServerHandle] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = SERVER_START_TIMEOUT,
    ) -> ServerHandle:
        root = tmp_path_factory.mktemp("server")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        full_env["RUNNER_MODELS_DIR"] = str(models_dir)
        full_env["RUNNER_CACHE_DIR"] = str(root / "kv-cache")
        # Tests import GGUFs they wrote under the temp dir as well as from the shared store.
        full_env["RUNNER_ALLOW_IMPORT"] = f"{tempfile.gettempdir()},{Path.home()}"
        full_env.update(env or {})
        argv = list(args)
        port = _free_port()
        if "--port" in argv:
            port = int(argv[argv.index("--port") + 1])
        else:
            argv += ["--port", str(port)]
        if "--host" not in argv:
            argv += ["--host", "127.0.0.1"]
        if "--threads" not in argv and "RUNNER_THREADS" not in full_env:
            argv += ["--threads", "1"]
        handle = ServerHandle(argv, full_env, port, root / "server.log")
        started.append(handle)
        return handle.start(wait=wait, timeout=timeout)

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    """One shared server for API tests: `ai/gemma3` preloaded, 4 slots x 2048 tokens.
    Do not stop or reconfigure it; start your own with `start_server` for that.

    The model never unloads when idle: modules using this server run minutes apart in a whole
    run (longer than the default 5 min idle timeout), and their tests expect it resident
    (`/slots`) and answering without a reload inside their timeouts."""
    return start_server(
        "--model", "ai/gemma3", "--slots", "4", "--ctx-size", "2048", "--idle-timeout", "-1"
    )
