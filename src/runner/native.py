"""Which llama.cpp build runner runs on, whether it fits this CPU, and a smoke decode.

`scripts/build-llama.sh` builds llama-cpp-python with runner's CPU policy (native minus AMX on
x86-64: llama.cpp's AMX matmul faults with SIGILL on some Sapphire Rapids guests) and records
the build in `<venv>/runner-llama-build.json`. This module reads that record and llama.cpp's own
system-info line, so `runner serve` can log what it runs, `/engines/status` can report it, the
test suite can check the installed build against the policy, and `make` can run one real decode
in a child process right after installing (`python -m runner.native smoke`): a build that dies
by a signal is caught at install time with a message that says what to do, not at the first
request.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

BUILD_RECORD = "runner-llama-build.json"
# The ISA extensions whose llama.cpp kernels runner's builds leave out, and why.
EXCLUDED_FEATURES = {
    "AMX_INT8": "llama.cpp's AMX matmul (ggml_backend_amx_mul_mat) faults with SIGILL on "
    "some AMX machines: its tile configuration and tile-data permission are set up unsafely",
}
SMOKE_SIGNAL_EXIT = 3
REBUILD_SAFE = "make rebuild-llama RUNNER_CPU=safe"


def build_record() -> dict[str, Any] | None:
    """What `scripts/build-llama.sh` recorded about the installed build (None: not built by it)."""
    path = Path(sys.prefix) / BUILD_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def system_info() -> str:
    """llama.cpp's system-info line: the CPU features its kernels were compiled with."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


def compiled_features(info: str | None = None) -> dict[str, bool]:
    """`{"AVX2": True, "AMX_INT8": False, ...}` from the system-info line."""
    features: dict[str, bool] = {}
    for part in (info if info is not None else system_info()).split("|"):
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if sep and name and value.strip() in ("0", "1"):
            features[name] = value.strip() == "1"
    return features


def host_cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where /proc is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def policy_violations(info: str | None = None) -> list[str]:
    """Why the installed build breaks runner's CPU policy (empty when it keeps it)."""
    features = compiled_features(info)
    return [
        f"llama.cpp was compiled with {name}: {why}"
        for name, why in EXCLUDED_FEATURES.items()
        if features.get(name)
    ]


def describe() -> dict[str, Any]:
    """The build as `/engines/status` and the start-up log line report it."""
    info = system_info()
    record = build_record() or {}
    return {
        "system_info": info,
        "cpu_features": sorted(k for k, on in compiled_features(info).items() if on),
        "cpu_policy": record.get("cpu_policy", "unknown (not built by scripts/build-llama.sh)"),
        "build_key": record.get("key"),
        "machine": platform.machine(),
        "policy_violations": policy_violations(info),
    }


_SMOKE_CHILD = """
import sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
print(llm("The capital of France is", max_tokens=4, temperature=0)["choices"][0]["text"])
"""


def _smoke_model() -> Path:
    from runner.store import BUNDLED_TAGS, ModelStore

    root = os.environ.get("RUNNER_TEST_MODELS_DIR")
    store = ModelStore(Path(root) if root else Path.home() / ".cache" / "runner-test" / "models")
    store.ensure_default()
    return store.get(BUNDLED_TAGS[0]).path


def _explain_signal(signum: int) -> str:
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else signum
    flags = host_cpu_flags()
    amx = sorted(f for f in flags if f.startswith("amx"))
    if signum == signal.SIGILL and amx:
        feature = f"AMX ({', '.join(amx)})"
        cause = (
            "the llama.cpp build runs an instruction this machine refuses; on AMX CPUs this is "
            "llama.cpp's AMX matmul path (tile set-up faults under some hypervisors)"
        )
    elif signum == signal.SIGILL:
        feature = "an instruction set the build was compiled for (for example AVX-512)"
        cause = "the llama.cpp wheel was built for another CPU (a cached or copied wheel)"
    else:
        feature = "unknown"
        cause = "llama.cpp crashed during its first decode"
    return (
        f"llama.cpp's smoke decode died by {name} on {platform.machine()} "
        f"(CPU feature: {feature}): {cause}. Rebuild without it: {REBUILD_SAFE}"
    )


def smoke(timeout: float = 600.0) -> int:
    """Decode a few tokens of the bundled model in a child process; 0 when it worked.

    A child, because the failure this guards against kills the process (SIGILL) and the parent
    must live to explain it. Exit 3 when the child died by a signal, 1 on any other failure.
    """
    try:
        model = _smoke_model()
    except Exception as exc:  # noqa: BLE001 - reported, then the install stops
        print(f"smoke decode: the bundled model is not available: {exc}", file=sys.stderr)
        return 1
    proc = subprocess.run(
        [sys.executable, "-c", _SMOKE_CHILD, str(model)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode < 0:
        print(_explain_signal(-proc.returncode), file=sys.stderr)
        return SMOKE_SIGNAL_EXIT
    if proc.returncode != 0:
        print(f"smoke decode failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return 1
    violations = policy_violations()
    for line in violations:
        print(f"smoke decode: {line}", file=sys.stderr)
    print(f"smoke decode ok: {proc.stdout.strip()!r}; {system_info()}")
    return 1 if violations else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["smoke"]:
        return smoke()
    if args == ["info"]:
        print(json.dumps(describe(), indent=1))
        return 0
    print("usage: python -m runner.native smoke|info", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
