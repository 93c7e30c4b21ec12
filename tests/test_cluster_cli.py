"""`python -m runner cluster serve` as a user runs it: the command starts its own local Ray
cluster, deploys two replicas of the bundled model with 1 thread each behind one URL, serves
the OpenAI client, and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")

from openai import OpenAI  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(600)]

MODEL = "ai/gemma3"
SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cluster_serve_command_deploys_replicas_and_stops_on_sigterm(
    runner_env: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    env = {
        **runner_env,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RUNNER_CACHE_DIR": str(tmp_path / "kv"),
        # The replicas (Ray workers) must import this checkout, as the command itself does.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    argv = [
        sys.executable, "-m", "runner", "cluster", "serve", "--replicas", "2", "--threads", "1",
        "--slots", "1", "--ctx-size", "512", "--model", MODEL, "--port", str(port),
    ]  # fmt: skip
    log = tmp_path / "cluster.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "runner cluster: 2 replicas (runner router)" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(1)
        url = f"http://127.0.0.1:{port}"
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=3
        )
        answer = raw.parse()
        assert answer.usage.completion_tokens >= 1 and answer.choices[0].finish_reason
        replicas = httpx.get(url + "/engines/status", timeout=30).json()["replicas"]
        assert raw.headers["x-runner-replica"] in {r["replica_id"] for r in replicas}
        assert len({r["pid"] for r in replicas}) == 2
        # Each replica keeps its own prompt cache under the configured cache directory.
        assert sorted(Path(r["cache_dir"]).name for r in replicas) == ["replica-0", "replica-1"]
        assert all(Path(r["cache_dir"]).parent == tmp_path / "kv" for r in replicas)
        rows = httpx.get(url + "/engines/ps", timeout=30).json()
        assert {row["replica"] for row in rows} == {r["replica_id"] for r in replicas}
        assert all(row["slots"] == 1 and row["context_size"] == 512 for row in rows)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
