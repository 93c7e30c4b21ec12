"""The installed llama.cpp build keeps runner's CPU policy, and the install-time smoke decode
turns a crash into a message that says what to do.

A dependency bump or a wheel from pip's cache (keyed by the sdist, not by the build flags) could
bring back the native build whose AMX matmul dies with SIGILL on AMX machines; these tests fail
on any machine where that happened, AMX or not, because the policy is about what was compiled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner import native

REPO = Path(__file__).resolve().parent.parent

SAMPLE = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | "
    "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)


def test_compiled_features_parse_the_system_info_line() -> None:
    features = native.compiled_features(SAMPLE)
    assert features["AVX2"] and features["AMX_INT8"] and features["REPACK"]
    assert "AVX512_BF16" not in features
    assert native.policy_violations(SAMPLE) and "AMX_INT8" in native.policy_violations(SAMPLE)[0]
    assert native.policy_violations(SAMPLE.replace("AMX_INT8 = 1 | ", "")) == []


def test_installed_build_has_no_amx_kernels() -> None:
    assert native.policy_violations() == [], native.system_info()


def test_installed_build_is_the_one_build_llama_sh_would_make_now() -> None:
    record = native.build_record()
    assert record is not None, "llama-cpp-python was not installed by scripts/build-llama.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(
        [str(REPO / "scripts" / "build-llama.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"key {record['key']}" in out, (record, out)
    if native.host_cpu_flags() & {"amx_tile", "amx_int8", "amx_bf16"}:
        assert record["cpu_policy"] == "safe" or "-mno-amx-int8" in record["cflags"]


def test_describe_reports_the_build() -> None:
    described = native.describe()
    assert described["system_info"] and described["policy_violations"] == []
    assert described["build_key"] == (native.build_record() or {}).get("key")


def test_smoke_decode_runs_the_bundled_model(bundled_model_path: Path) -> None:
    assert native.smoke() == 0


def test_smoke_explains_a_child_killed_by_sigill(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The child stands in for a build that faults: it dies by SIGILL as the AMX path does.
    monkeypatch.setattr(native, "_smoke_model", lambda: tmp_path / "unused.gguf")
    monkeypatch.setattr(
        native, "_SMOKE_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    )
    assert native.smoke() == native.SMOKE_SIGNAL_EXIT
    err = capsys.readouterr().err
    assert "SIGILL" in err and native.REBUILD_SAFE in err and "CPU feature" in err


def test_explanation_names_amx_on_an_amx_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "host_cpu_flags", lambda: {"avx512f", "amx_tile", "amx_int8"})
    text = native._explain_signal(signal.SIGILL)
    assert "AMX (amx_int8, amx_tile)" in text and native.REBUILD_SAFE in text


def test_build_script_refuses_unknown_policies() -> None:
    env = dict(os.environ, PYTHON=sys.executable, RUNNER_CPU="fastest")
    proc = subprocess.run(
        [str(REPO / "scripts" / "build-llama.sh"), "--dry-run"], env=env, capture_output=True
    )
    assert proc.returncode == 2


def test_safe_policy_compiles_no_native_or_amx_code() -> None:
    env = dict(os.environ, PYTHON=sys.executable, RUNNER_CPU="safe", RUNNER_GPU="cpu")
    out = subprocess.run(
        [str(REPO / "scripts" / "build-llama.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-DGGML_NATIVE=OFF" in out
    if os.uname().machine in ("x86_64", "amd64"):
        assert "-DGGML_AMX_INT8=OFF" in out and "-DGGML_AVX512=OFF" in out


def test_serve_logs_and_reports_the_build(server) -> None:  # noqa: ANN001 - conftest's handle
    import httpx

    status = httpx.get(f"{server.url}/engines/status", timeout=30).json()
    build = status["llama_build"]
    assert build["system_info"] == native.system_info()
    assert build["policy_violations"] == []
    if os.uname().machine in ("x86_64", "amd64"):
        assert "AVX" in build["cpu_features"]
    assert "llama.cpp build (CPU policy" in server.logs()
