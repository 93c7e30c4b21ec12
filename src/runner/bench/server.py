"""A throwaway `runner serve` subprocess for benchmarks run without `--url`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from .client import BenchError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """`python -m runner serve` on a free port with `model` preloaded; `base_url` once up.

    The prompt cache goes to a temporary dir (`--no-persist`), the log to `log_path`.
    """

    def __init__(
        self,
        model: str,
        *,
        slots: int = 4,
        ctx_size: int = 2048,
        gpu_layers: str | None = None,
        threads: int | None = None,
        extra_args: list[str] | None = None,
        models_dir: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root + "/engines/llama.cpp/v1"
        self._tmp = tempfile.TemporaryDirectory(prefix="runner-bench-")
        self.log_path = log_path or Path(self._tmp.name) / "server.log"
        self.argv = [
            sys.executable, "-m", "runner", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--model", model,
            "--slots", str(slots), "--ctx-size", str(ctx_size), "--no-persist",
        ]  # fmt: skip
        if gpu_layers is not None:
            self.argv += ["--gpu-layers", str(gpu_layers)]
        if threads is not None:
            self.argv += ["--threads", str(threads)]
        self.argv += extra_args or []
        self.env = dict(os.environ, RUNNER_CACHE_DIR=str(Path(self._tmp.name) / "kv-cache"))
        if models_dir:
            self.env["RUNNER_MODELS_DIR"] = str(models_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> LocalServer:
        """Start and wait until `/health` answers (the model is then loaded)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"runner serve exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.root + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise BenchError(f"runner serve not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; removes the temporary dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> LocalServer:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
