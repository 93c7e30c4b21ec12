"""A real OCI registry for tests: Debian's `docker-registry` (CNCF Distribution) on 127.0.0.1,
storing into a temp dir, optionally behind htpasswd basic auth. `.ci/run` installs it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import bcrypt
import httpx
import pytest

BINARY = "docker-registry"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RegistryProcess:
    def __init__(self, root: Path, credentials: tuple[str, str] | None = None) -> None:
        binary = shutil.which(BINARY) or ("/usr/bin/" + BINARY)
        if not Path(binary).exists():
            pytest.fail(f"{BINARY} is not installed (apt-get install docker-registry)")
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        auth = ""
        if credentials:
            hashed = bcrypt.hashpw(credentials[1].encode(), bcrypt.gensalt(rounds=4)).decode()
            (root / "htpasswd").write_text(f"{credentials[0]}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: runner-test\n    path: {root / 'htpasswd'}\n"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n" + auth
        )
        self.log = (root / "registry.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://{self.host}/v2/").status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (root / "registry.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"docker-registry did not start:\n{log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
