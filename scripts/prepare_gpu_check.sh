#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on the device machine (no network there) in
# .whl/gpu-check/ (git-ignored; carry it: `run` with carry [".whl/gpu-check"]):
#   1. wheels of runner's dependencies missing from the device image, for its Python 3.12
#      (same versions as this .venv);
#   2. the bundled model's skeleton (metadata + tensor shapes, ~2 MB; see gguf_skeleton.py),
#      since the 250 MB model itself cannot travel (64 MiB limit);
#   3. a check that the CUDA wheel from scripts/build_cuda_wheel.sh is there, and the total size.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.whl/gpu-check}
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
# Not in the device image (KINDS.md lists what is): the API stack and gguf.
PKGS="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv sse-starlette
uvicorn annotated-types typing-inspection opentelemetry-api gguf"
mkdir -p "$DEST"

specs=()
for p in $PKGS; do
    specs+=("$p==$("$PYTHON" -c "from importlib.metadata import version; print(version('$p'))")")
done
echo "== wheels for Python 3.12: ${specs[*]}"
find "$DEST" -maxdepth 1 -name '*.whl' ! -name 'llama_cpp_python-*' -delete
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$DEST" "${specs[@]}"

echo "== model skeleton"
"$PYTHON" scripts/gguf_skeleton.py extract ${SOURCE_GGUF:-} "$DEST/model-skeleton.json.gz"

echo "== CUDA wheel"
if ls "$DEST"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    ls -l "$DEST"/llama_cpp_python-*.whl
else
    echo "missing: build it with scripts/build_cuda_wheel.sh (long), then rerun this check"
fi
total=$(du -sm "$DEST" | cut -f1)
echo "== $DEST: ${total} MiB (the working tree plus carried paths must stay under 64 MiB)"
