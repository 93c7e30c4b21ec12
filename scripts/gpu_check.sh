#!/usr/bin/env bash
# The GPU check: one prepared run on the device machine (H200, no network), ~3-5 minutes.
#
# Here, once (see README "## GPU builds"):
#   scripts/build_cuda_wheel.sh      # CUDA wheel for sm_90 into .whl/gpu-check (long)
#   scripts/prepare_gpu_check.sh     # dependency wheels + model skeleton into .whl/gpu-check
# Then with the device tool:
#   run(command="scripts/gpu_check.sh", carry=[".whl/gpu-check"], timeout_s=600)
#
# It installs the wheels into /tmp, rebuilds the bundled model's architecture with random
# weights (same tensor types and size as ai/gemma3:270m Q4_K_M; see gguf_skeleton.py), and
# runs `runner bench cache` and `runner bench concurrency` with every layer on the GPU.
# $OUT receives gpu_check.log and each benchmark's JSON, PNG and server log (7 files).
#
# The concurrency JSON's summary has, per level, the engine's ubatches per step (passes over the
# weights; 1.0 is one per step) and its milliseconds per step outside llama_decode and the
# samplers (outside_ms_per_step); the last step prints them.
#
# Knobs (env): LEVELS (1,2,4,8,16,32), SLOTS (32), CTX (2048 per slot), PROMPT_TOKENS (256),
# MAX_TOKENS (128), SYSTEM_TOKENS (1000), MODEL_GGUF (a GGUF to use instead of the skeleton),
# PYTHON (python3), SKIP_INSTALL=1 (use the current environment), ALLOW_CPU=1 (go on without
# GPU offload: only for trying this script on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu-check-out}
WHEELS=${WHEELS:-.whl/gpu-check}
PYTHON=${PYTHON:-python3}
LEVELS=${LEVELS:-1,2,4,8,16,32}
SLOTS=${SLOTS:-32}
CTX=${CTX:-2048}
WORK=${WORK:-/tmp/runner-gpu-check}
MODEL=bench/gemma3-270m-random:q4_k_m
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu_check.log") 2>&1
step() { echo; echo "== $(date +%T) $*"; }
fail() { echo "FAILED: $*"; exit 1; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1 || true
"$PYTHON" --version

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    step "install wheels from $WHEELS"
    ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1 \
        || fail "no CUDA llama-cpp-python wheel in $WHEELS (scripts/build_cuda_wheel.sh)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$WHEELS"/*.whl || fail "pip install"
    export PYTHONPATH="$WORK/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi

# The CUDA build links libcudart/libcublas: take them from the toolkit or the image's
# nvidia-* pip packages.
libdirs=$("$PYTHON" - <<'PY'
import glob, os, site
roots = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
roots += [os.path.join(p, "nvidia") for p in site.getsitepackages()]
dirs = []
for root in roots:
    for pat in ("libcudart.so*", "libcublas.so*", "libcublasLt.so*"):
        for f in glob.glob(os.path.join(root, "**", pat), recursive=True):
            if os.path.dirname(f) not in dirs:
                dirs.append(os.path.dirname(f))
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

step "llama.cpp build"
"$PYTHON" - <<'PY' || [[ "${ALLOW_CPU:-0}" == 1 ]] || fail "llama-cpp-python has no GPU offload"
import os, subprocess, llama_cpp
lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
print("llama-cpp-python", llama_cpp.__version__, "from", lib)
for so in sorted(os.listdir(lib)):
    if so.startswith("libggml-cuda") and so.endswith(".so"):
        missing = [l for l in subprocess.run(["ldd", os.path.join(lib, so)], capture_output=True,
                   text=True).stdout.splitlines() if "not found" in l]
        print(so, "missing:", missing or "none")
offload = bool(llama_cpp.llama_supports_gpu_offload())
print("gpu offload:", offload)
raise SystemExit(0 if offload else 1)
PY

step "model"
export RUNNER_MODELS_DIR="$WORK/models"
if [[ -n "${MODEL_GGUF:-}" ]]; then
    gguf="$MODEL_GGUF"
else
    gguf="$WORK/model.gguf"
    [[ -f "$gguf" ]] || "$PYTHON" scripts/gguf_skeleton.py expand \
        "$WHEELS/model-skeleton.json.gz" "$gguf" || fail "model from skeleton"
fi
"$PYTHON" -m runner models add "$MODEL" "$gguf" || fail "models add"

bench() {
    step "bench $*"
    timeout 280 "$PYTHON" -m runner bench "$@" --model "$MODEL" --gpu-layers all \
        --slots "$SLOTS" --ctx-size "$CTX" --out "$OUT" --quiet || echo "bench $1 exited $?"
}
bench cache --system-tokens "${SYSTEM_TOKENS:-1000}" --repeats 5
bench concurrency --levels "$LEVELS" --prompt-tokens "${PROMPT_TOKENS:-256}" \
    --max-tokens "${MAX_TOKENS:-128}"

step "engine per step (ubatches, ms outside llama_decode and samplers)"
"$PYTHON" - "$OUT" <<'PY'
import glob, json, os, sys
files = sorted(glob.glob(os.path.join(sys.argv[1], "concurrency-*.json")), key=os.path.getmtime)
if not files:
    raise SystemExit("no concurrency report")
report = json.load(open(files[-1]))
for run in report.get("runs", [report]):
    for level in run.get("result", run).get("levels", []):
        e = level.get("engine") or {}
        print(f"streams {level['concurrency']:>3}: {level['throughput_tps'] or 0:8.1f} tok/s, "
              f"ubatches/step {e.get('ubatches_per_step')}, "
              f"outside ms/step {e.get('outside_ms_per_step')}, "
              f"sample ms/step {e.get('sample_ms_per_step')}")
PY

step "done"
ls -l "$OUT"
