#!/usr/bin/env bash
# Reinstall llama-cpp-python (the version pinned in pyproject.toml) built from source for a
# GPU backend. Usage:
#
#   RUNNER_GPU=cuda|vulkan|metal|cpu|auto scripts/install-gpu.sh [--dry-run] [--if-needed]
#
#   RUNNER_GPU       backend (default auto: cuda if nvcc is found, metal on macOS, else cpu)
#   CUDA_ARCH        optional CMAKE_CUDA_ARCHITECTURES, e.g. 90 (H100/H200), 89, "86;89"
#   CMAKE_ARGS       extra CMake flags, appended to the backend's
#   PYTHON           interpreter of the environment to install into (default .venv/bin/python,
#                    else python3)
#
#   --dry-run        print the build command only
#   --if-needed      skip when the installed build already offloads to a GPU (non-cpu backends)
#
# `make gpu RUNNER_GPU=cuda` runs this; the venv bootstrap of `make serve|test|install` runs it
# with --if-needed whenever RUNNER_GPU is set.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0 IF_NEEDED=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --if-needed) IF_NEEDED=1 ;;
        *) echo "usage: RUNNER_GPU=cuda|vulkan|metal|cpu|auto $0 [--dry-run] [--if-needed]" >&2
           exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
VERSION=$(grep -o 'llama-cpp-python==[0-9][0-9.]*' pyproject.toml | head -n1 | cut -d= -f3)
VERSION=${VERSION:-0.3.36}

GPU=${RUNNER_GPU:-auto}
if [[ "$GPU" == auto ]]; then
    if [[ "$(uname -s)" == Darwin ]]; then GPU=metal
    elif command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then GPU=cuda
    else GPU=cpu; fi
fi

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

export CMAKE_ARGS="${FLAGS}${CMAKE_ARGS:+ $CMAKE_ARGS}"
CMD=("$PYTHON" -m pip install --force-reinstall --no-deps --no-cache-dir
     --no-binary llama-cpp-python "llama-cpp-python==${VERSION}")

if [[ "$IF_NEEDED" == 1 && "$GPU" != cpu ]] && "$PYTHON" -c \
    "import sys, llama_cpp; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" \
    2>/dev/null; then
    echo "llama-cpp-python already offloads to a GPU; not rebuilding (run without --if-needed to)"
    exit 0
fi

echo "backend: $GPU"
echo "CMAKE_ARGS='$CMAKE_ARGS' ${CMD[*]}"
[[ "$DRY_RUN" == 1 ]] && exit 0
echo "building llama.cpp from source: this takes minutes (CUDA: tens of minutes on few cores)"
"${CMD[@]}"
"$PYTHON" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, \
'gpu offload:', bool(llama_cpp.llama_supports_gpu_offload()))"
