#!/usr/bin/env bash
# Build a CUDA wheel of llama-cpp-python (the version pinned in pyproject.toml) for the GPU
# check, here, where pip can download; the device machine has no network. Usage:
#
#   scripts/build_cuda_wheel.sh            # sm_90 (H100/H200) into .whl/gpu-check/
#   CUDA_ARCH="89;90" DEST=dist/ scripts/build_cuda_wheel.sh
#
# Needs nvcc (CUDA 13 here matches the device image's toolkit and driver). The wheel is tagged
# py3-none-linux_x86_64 (llama-cpp-python is ctypes), so the device's Python 3.12 takes it.
# GGML_NATIVE=off: the CPU code must not assume this machine's instruction set. Slow: roughly
# an hour on 2 cores (one CUDA architecture); set JOBS to the cores you can spare.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${CUDA_ARCH:-90}
DEST=${DEST:-.whl/gpu-check}
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
VERSION=$(grep -o 'llama-cpp-python==[0-9][0-9.]*' pyproject.toml | head -n1 | cut -d= -f3)
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH="/usr/local/cuda/bin:$PATH"
command -v nvcc >/dev/null || { echo "error: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }

export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${ARCH} -DGGML_NATIVE=off${CMAKE_ARGS:+ $CMAKE_ARGS}"
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)}
mkdir -p "$DEST"
rm -f "$DEST"/llama_cpp_python-*.whl
echo "nvcc $(nvcc --version | grep -o 'release [0-9.]*'); CMAKE_ARGS='$CMAKE_ARGS'"
"$PYTHON" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$DEST" \
    "llama-cpp-python==${VERSION}"
ls -l "$DEST"/llama_cpp_python-*.whl
