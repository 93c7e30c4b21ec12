"""A real server whose prompt-cache directory is a small filesystem (a tmpfs mounted in a
private mount namespace): the disk tier writes until the free-space reserve and no further,
whatever `--cache-disk` says, and the server answers throughout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ServerHandle

TMPFS_MIB = 32
RESERVE_MIB = 24  # leaves 8 MiB: two or three prefixes of ~150 tokens (~18 KB of KV each)


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = 'd=$(mktemp -d) && mount -t tmpfs -o size=1m none "$d"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(
    not _namespaces_work(), reason="needs unshare -rm (user and mount namespaces) to mount a tmpfs"
)


class SmallDiskServer(ServerHandle):
    """`runner serve` in its own mount namespace, with a `TMPFS_MIB` tmpfs as cache dir.
    The test sees that filesystem through /proc/PID/root."""

    def __init__(self, *args: object, cache_dir: Path, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.cache_dir = cache_dir

    def start(self, wait: bool = True, timeout: float = 180.0) -> ServerHandle:
        mount = f'mount -t tmpfs -o size={TMPFS_MIB}m runner-cache "$0" && exec "$@"'
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-rm", "sh", "-c", mount, str(self.cache_dir),
                 sys.executable, "-m", "runner", "serve", *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        if wait:
            self.wait_ready(timeout)
        return self

    def cache_fs_free(self) -> int:
        assert self.proc is not None
        st = os.statvfs(f"/proc/{self.proc.pid}/root{self.cache_dir}")
        return st.f_bavail * st.f_frsize

    def cache_files(self) -> list[Path]:
        assert self.proc is not None
        return list(Path(f"/proc/{self.proc.pid}/root{self.cache_dir}").rglob("*.kvc"))


@pytest.fixture
def small_disk_server(
    models_dir: Path, tmp_path: Path, free_port: int
) -> Iterator[SmallDiskServer]:
    cache_dir = tmp_path / "kv-cache"
    cache_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env |= {
        "RUNNER_MODELS_DIR": str(models_dir),
        "RUNNER_CACHE_DIR": str(cache_dir),
        "RUNNER_CACHE_DISK_RESERVE": f"{RESERVE_MIB}MiB",
    }
    args = ["--model", "ai/gemma3", "--slots", "1", "--ctx-size", "1024", "--threads", "1",
            "--cache-ram", "0", "--host", "127.0.0.1", "--port", str(free_port)]  # fmt: skip
    server = SmallDiskServer(args, env, free_port, tmp_path / "server.log", cache_dir=cache_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metric(text: str, name: str, tier: str | None = None) -> float:
    label = f'tier="{tier}"' if tier else ""
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {label} not in /metrics")


def test_the_disk_tier_stops_at_the_reserve_of_a_small_filesystem(
    small_disk_server: SmallDiskServer,
) -> None:
    server = small_disk_server
    assert server.cache_fs_free() > (TMPFS_MIB - 1) << 20
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        for i in range(8):  # each prompt pushes the previous one's prefix to the disk tier
            words = " ".join(f"topic{i}-item{j}" for j in range(40))
            r = client.post(
                "/completions",
                json={"model": "ai/gemma3", "prompt": f"Notes {i}: {words}", "max_tokens": 2,
                      "temperature": 0},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            assert server.cache_fs_free() >= RESERVE_MIB << 20
        metrics = httpx.get(server.url + "/metrics", timeout=60).text
    assert _metric(metrics, "runner:prompt_cache_writes_total") >= 1  # works up to the reserve
    assert server.cache_files()
    assert server.cache_fs_free() >= RESERVE_MIB << 20  # ...and stops there
    # Made room by evicting its oldest entries (a few MiB each), with --cache-disk at 8 GiB.
    assert _metric(metrics, "runner:prompt_cache_evictions_total", "disk") >= 1
