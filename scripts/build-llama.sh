#!/usr/bin/env bash
# Build (or take from runner's own wheel cache) the llama-cpp-python pinned in pyproject.toml,
# with runner's CPU policy, and install it into $PYTHON's environment. Usage:
#
#   RUNNER_GPU=cpu|cuda|vulkan|metal|auto RUNNER_CPU=native|safe scripts/build-llama.sh \
#       [--dry-run] [--if-needed] [--force]
#
#   RUNNER_GPU   backend (default cpu; auto: cuda if nvcc is found, metal on macOS, else cpu)
#   RUNNER_CPU   native (default): -march=native minus AMX on x86-64 (llama.cpp's AMX matmul
#                faults with SIGILL on some Sapphire Rapids guests); safe: no -march=native,
#                only AVX/AVX2/FMA/F16C/BMI2 where the CPU has them (what `make` falls back to
#                when the smoke decode dies by a signal)
#   CUDA_ARCH    optional CMAKE_CUDA_ARCHITECTURES, e.g. 90 (H100/H200)
#   CMAKE_ARGS   extra CMake flags, appended
#   PYTHON       interpreter of the environment to install into (default .venv/bin/python)
#   RUNNER_WHEEL_CACHE  where built wheels are kept (default ~/.cache/runner/wheels)
#
#   --dry-run    print the build key, flags and command, build nothing
#   --if-needed  do nothing when the installed build already has this key
#   --force      rebuild even when the wheel cache has this key
#
# Wheels are cached under a key of everything that changes the binary (version, machine, CPU
# model and flags, compiler, backend flags, policy): pip's own wheel cache is keyed by the sdist
# only, so a wheel built with other flags (a faulting native build, another machine's CPU) would
# come back from it. The installed build's key and flags go to $PREFIX/runner-llama-build.json,
# which runner reports and the test suite checks against the policy.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0 IF_NEEDED=0 FORCE=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --if-needed) IF_NEEDED=1 ;;
        --force) FORCE=1 ;;
        *) echo "usage: RUNNER_GPU=cpu|cuda|vulkan|metal|auto RUNNER_CPU=native|safe $0 [--dry-run] [--if-needed] [--force]" >&2
           exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
VERSION=$(grep -o 'llama-cpp-python==[0-9][0-9.]*' pyproject.toml | head -n1 | cut -d= -f3)
VERSION=${VERSION:-0.3.36}

PREFIX=$("$PYTHON" -c 'import sys; print(sys.prefix)')
INFO="$PREFIX/runner-llama-build.json"
# Unset RUNNER_GPU / RUNNER_CPU keep what the installed build chose (a CUDA build stays CUDA,
# a machine that needed the safe CPU build keeps it), else cpu / native.
recorded() { [[ -r "$INFO" ]] && "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$INFO" "$1" 2>/dev/null || true; }
GPU=${RUNNER_GPU:-$(recorded backend)}
[[ -z "$GPU" ]] && GPU=cpu
if [[ "$GPU" == auto ]]; then
    if [[ "$(uname -s)" == Darwin ]]; then GPU=metal
    elif command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then GPU=cuda
    else GPU=cpu; fi
fi
CPU_POLICY=${RUNNER_CPU:-$(recorded cpu_policy)}
[[ -z "$CPU_POLICY" ]] && CPU_POLICY=native
case "$CPU_POLICY" in native|safe) ;; *) echo "error: RUNNER_CPU must be native or safe (got '$CPU_POLICY')" >&2; exit 2 ;; esac

case "$GPU" in
    cuda)
        FLAGS="-DGGML_CUDA=on"
        [[ -n "${CUDA_ARCH:-}" ]] && FLAGS+=" -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH}"
        if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
            export PATH="/usr/local/cuda/bin:$PATH" CUDACXX=/usr/local/cuda/bin/nvcc
        fi ;;
    vulkan) FLAGS="-DGGML_VULKAN=on" ;;
    metal) FLAGS="-DGGML_METAL=on" ;;
    cpu)
        FLAGS=""
        [[ "$(uname -s)" == Darwin ]] && FLAGS="-DGGML_METAL=off" ;;
    *)
        echo "error: RUNNER_GPU must be cuda, vulkan, metal, cpu or auto (got '$GPU')" >&2
        exit 2 ;;
esac

MACHINE=$(uname -m)
CPU_FLAGS=""
CPU_MODEL=""
if [[ -r /proc/cpuinfo ]]; then
    CPU_FLAGS=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo | cut -d: -f2- | xargs -n1 | sort | xargs || true)
    CPU_MODEL=$(grep -m1 -E '^model name' /proc/cpuinfo | cut -d: -f2- | xargs || true)
elif [[ "$(uname -s)" == Darwin ]]; then
    CPU_MODEL=$(sysctl -n machdep.cpu.brand_string 2>/dev/null || true)
fi
has() { [[ " $CPU_FLAGS " == *" $1 "* ]]; }
CC_BIN=${CC:-cc}

NATIVE_CFLAGS=""
case "$MACHINE" in
    x86_64|amd64)
        if [[ "$CPU_POLICY" == safe ]]; then
            FLAGS+=" -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
            FLAGS+=" -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
            for f in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 sse4_2:SSE42; do
                if has "${f%%:*}"; then FLAGS+=" -DGGML_${f##*:}=ON"; else FLAGS+=" -DGGML_${f##*:}=OFF"; fi
            done
        else
            # -march=native would turn on __AMX_INT8__ and with it ggml's AMX matmul, whose tile
            # set-up faults (SIGILL in tilezero) on some AMX guests. GCC and Clang keep an
            # explicit -mno-<isa> over the later -march=native, so everything else stays native.
            for isa in amx-tile amx-int8 amx-bf16 amx-fp16 amx-complex; do
                if echo 'int main(void){return 0;}' | "$CC_BIN" -x c "-mno-$isa" -fsyntax-only - 2>/dev/null; then
                    NATIVE_CFLAGS+=" -mno-$isa"
                fi
            done
            NATIVE_CFLAGS=${NATIVE_CFLAGS# }
        fi ;;
    *)
        [[ "$CPU_POLICY" == safe ]] && FLAGS+=" -DGGML_NATIVE=OFF" ;;
esac

export CMAKE_ARGS="${FLAGS# }${CMAKE_ARGS:+ $CMAKE_ARGS}"
if [[ -n "$NATIVE_CFLAGS" ]]; then
    export CFLAGS="${CFLAGS:+$CFLAGS }$NATIVE_CFLAGS" CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }$NATIVE_CFLAGS"
fi
CC_VERSION=$("$CC_BIN" --version 2>/dev/null | head -n1 || echo unknown)
PY_TAG=$("$PYTHON" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())')
KEY_TEXT="llama-cpp-python==$VERSION|$MACHINE|$CPU_MODEL|$CPU_FLAGS|$CC_VERSION|$PY_TAG|$GPU|$CPU_POLICY|$CMAKE_ARGS|${CFLAGS:-}|${CXXFLAGS:-}"
KEY=$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:16])' "$KEY_TEXT")
CACHE_ROOT=${RUNNER_WHEEL_CACHE:-$HOME/.cache/runner/wheels}
WHEEL_DIR="$CACHE_ROOT/$KEY"

BUILD=("$PYTHON" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python
       "llama-cpp-python==${VERSION}" -w "$WHEEL_DIR.tmp")
echo "llama.cpp build: backend $GPU, CPU policy $CPU_POLICY, key $KEY"
echo "CMAKE_ARGS='$CMAKE_ARGS' CFLAGS='${CFLAGS:-}' ${BUILD[*]}"
[[ "$DRY_RUN" == 1 ]] && exit 0

if [[ "$IF_NEEDED" == 1 && -r "$INFO" ]] && grep -q "\"key\": \"$KEY\"" "$INFO" \
    && "$PYTHON" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "llama-cpp-python $VERSION with key $KEY is installed; nothing to do"
    exit 0
fi

shopt -s nullglob
WHEELS=("$WHEEL_DIR"/llama_cpp_python-*.whl)
if [[ "$FORCE" == 1 || ${#WHEELS[@]} -eq 0 ]]; then
    echo "building llama.cpp from source: this takes minutes (CUDA: tens of minutes on few cores)"
    rm -rf "$WHEEL_DIR.tmp" && mkdir -p "$CACHE_ROOT"
    START=$(date +%s)
    "${BUILD[@]}"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
    printf '%s\n' "$KEY_TEXT" > "$WHEEL_DIR/key.txt"
    echo "built in $(( $(date +%s) - START )) s; cached in $WHEEL_DIR"
    WHEELS=("$WHEEL_DIR"/llama_cpp_python-*.whl)
else
    echo "using the cached wheel ${WHEELS[0]} (no compile)"
fi
"$PYTHON" -m pip install --force-reinstall --no-deps --no-cache-dir -q "${WHEELS[0]}"
"$PYTHON" -m pip install -q "${WHEELS[0]}"  # its dependencies (numpy, jinja2, ...), if missing

"$PYTHON" - "$INFO" "$KEY" "$GPU" "$CPU_POLICY" "$CMAKE_ARGS" "${CFLAGS:-}" "$CPU_MODEL" "$CPU_FLAGS" <<'EOF'
import json, sys
path, key, gpu, policy, cmake_args, cflags, cpu_model, cpu_flags = sys.argv[1:]
info = {"key": key, "backend": gpu, "cpu_policy": policy, "cmake_args": cmake_args,
        "cflags": cflags, "cpu_model": cpu_model, "cpu_flags": cpu_flags.split()}
with open(path, "w") as f:
    json.dump(info, f, indent=1)
EOF
"$PYTHON" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, \
'gpu offload:', bool(llama_cpp.llama_supports_gpu_offload()))"
