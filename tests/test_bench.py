"""`runner bench`: pure helpers in-process, then end-to-end runs against the bundled
model (kept tiny: the test box has 2 busy cores), and the GPU install script's dry run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.bench import prompts, report
from runner.bench.cli import _levels
from runner.bench.client import normalize_base, parse_metrics, percentile, root_url
from runner.bench.workloads import Plan, engine_profile

REPO = Path(__file__).resolve().parent.parent

METRICS = """\
# HELP runner:decode_seconds_total Time spent in llama_decode.
# TYPE runner:decode_seconds_total counter
runner:decode_seconds_total{model="ai/gemma3:latest"} 8.5
runner:decode_seconds_total{model="other/model:latest"} 100.0
runner:step_seconds_total{model="ai/gemma3:latest"} 10.0
llamacpp:n_decode_total{model="ai/gemma3:latest"} 12.0
runner:models_loaded 2.0
"""


def test_urls() -> None:
    assert normalize_base("http://h:1/") == "http://h:1/v1"
    assert normalize_base("http://h:1/engines/llama.cpp/v1") == "http://h:1/engines/llama.cpp/v1"
    assert root_url("http://h:1/engines/llama.cpp/v1") == "http://h:1"
    assert root_url("http://h:1/engines/v1") == "http://h:1"
    assert root_url("http://h:8080/v1") == "http://h:8080"


def test_parse_metrics_filters_by_model() -> None:
    got = parse_metrics(METRICS, "ai/gemma3")
    assert got["runner:decode_seconds_total"] == 8.5
    assert got["runner:models_loaded"] == 2.0
    assert parse_metrics(METRICS)["runner:decode_seconds_total"] == 108.5


def test_engine_profile() -> None:
    before = {"runner:decode_seconds_total": 1.0, "runner:step_seconds_total": 1.0}
    after = parse_metrics(METRICS, "ai/gemma3")
    prof = engine_profile(before, after, wall_s=10.0)
    assert prof is not None
    assert prof["outside_decode_share"] == pytest.approx(1 - 7.5 / 9.0)
    assert prof["decode_share_of_wall"] == pytest.approx(0.75)
    # No step counter (older server, llama-server): no share, but no crash either.
    del after["runner:step_seconds_total"]
    prof = engine_profile(before, after, 10.0)
    assert prof is not None and prof["outside_decode_share"] is None
    assert engine_profile(None, after, 10.0) is None


def test_helpers() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    assert _levels("1, 2,4") == (1, 2, 4)
    assert Plan(levels=(1, 2), rounds=2).requests("concurrency") == 6
    text = prompts.system_prompt(300, "abc")
    assert text.startswith("[abc] ") and 280 <= len(text.split()) <= 310
    assert prompts.filler(50, seed=1) == prompts.filler(50, seed=1)
    runs: list[dict[str, Any]] = [{"summary": {"x": 4.0, "y": None}}, {"summary": {"x": 2.0}}]
    assert report.ratios(runs) == {"x": 2.0}


def _bench(
    *args: str, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "bench", *args, "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _report(out: Path, workload: str) -> dict[str, Any]:
    (path,) = out.glob(f"{workload}-*.json")
    assert path.with_suffix(".png").stat().st_size > 1000
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_cache_local_server(runner_env: dict[str, str], tmp_path: Path) -> None:
    """No --url: bench starts runner itself on the bundled model, and the cache pays off."""
    env = dict(runner_env, RUNNER_CACHE_DIR=str(tmp_path / "kv"))
    result = _bench(
        "cache", "--system-tokens", "300", "--repeats", "1", "--max-tokens", "4",
        "--slots", "2", "--ctx-size", "1024", "--threads", "1", "--out", str(tmp_path),
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    match = re.search(r"prompt speedup ([\d.]+)x", result.stdout)
    assert match and float(match.group(1)) > 1, result.stdout
    data = _report(tmp_path, "cache")
    summary = data["runs"][0]["summary"]
    assert summary["cached_cache_n"] > 0
    assert summary["cached_prompt_n"] < summary["cold_prompt_n"]
    assert summary["prompt_speedup"] > 1
    assert data["runs"][0]["local"] is True
    assert data["machine"]["cpu_count"] >= 1 and "ram_bytes" in data["machine"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_concurrency_against_url(
    start_server: Callable[..., Any], runner_env: dict[str, str], tmp_path: Path
) -> None:
    """--url points at a second runner instance; fixed output length via ignore_eos."""
    handle = start_server("--model", "ai/gemma3", "--slots", "2", "--ctx-size", "1024")
    result = _bench(
        "concurrency", "--url", handle.base_url, "--levels", "1,2", "--max-tokens", "6",
        "--prompt-tokens", "24", "--out", str(tmp_path), env=runner_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "streams" in result.stdout and "tok/s" in result.stdout
    data = _report(tmp_path, "concurrency")
    run = data["runs"][0]
    assert run["url"] == handle.base_url and run["local"] is False
    levels = {lv["concurrency"]: lv for lv in run["levels"]}
    assert set(levels) == {1, 2}
    for n, lv in levels.items():
        assert lv["errors"] == 0, lv["error_samples"]
        assert lv["output_tokens"] == 6 * n  # ignore_eos: every stream runs to max_tokens
        assert lv["throughput_tps"] > 0 and lv["ttft_p50_ms"] > 0
        assert lv["engine"]["decode_s"] > 0  # runner's /metrics counters were read
    assert run["server_info"]  # /engines/status answered


def test_install_gpu_dry_run() -> None:
    script = REPO / "scripts" / "install-gpu.sh"
    env = dict(os.environ, RUNNER_GPU="cuda", CUDA_ARCH="90", PYTHON=sys.executable)
    out = subprocess.run(
        [str(script), "--dry-run"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" in out
    assert "--no-binary llama-cpp-python" in out and "llama-cpp-python==0.3.36" in out
    env["RUNNER_GPU"] = "vulkan"
    out = subprocess.run([str(script), "--dry-run"], env=env, capture_output=True, text=True).stdout
    assert "-DGGML_VULKAN=on" in out
    env["RUNNER_GPU"] = "nope"
    assert subprocess.run([str(script), "--dry-run"], env=env, capture_output=True).returncode == 2
