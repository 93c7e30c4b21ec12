#!/usr/bin/env bash
# runner vs llama.cpp's own server, same model, same client, one run (ratios, not absolutes).
#
#   LLAMA_SERVER=/path/to/llama-server scripts/compare_llama_server.sh [OUT_DIR]
#
# Build llama-server from the llama.cpp that llama-cpp-python vendors (same kernels):
#   pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
#   cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B build -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF
#   cmake --build build --target llama-server -j
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-scripts/results}
PY=${PY:-.venv/bin/python}
LLAMA_SERVER=${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}
SLOTS=${SLOTS:-4}
CTX=${CTX:-2048}
THREADS=${THREADS:-$(nproc)}
LEVELS=${LEVELS:-1,2,4,8}
MAX_TOKENS=${MAX_TOKENS:-128}
MODEL_PATH=$($PY -c 'from runner.store import ModelStore, BUNDLED_TAGS; from runner.config import Settings; print(ModelStore(Settings().models_dir).get(BUNDLED_TAGS[0]).path)')
mkdir -p "$OUT"

"$LLAMA_SERVER" -m "$MODEL_PATH" --port 18081 -np "$SLOTS" -c $((SLOTS * CTX)) -t "$THREADS" \
  --no-webui >"$OUT/llama-server.log" 2>&1 &
LS_PID=$!
$PY -m runner serve --port 18082 --slots "$SLOTS" --ctx-size "$CTX" --threads "$THREADS" \
  --model ai/gemma3 >"$OUT/runner-server.log" 2>&1 &
RS_PID=$!
trap 'kill $LS_PID $RS_PID 2>/dev/null; wait 2>/dev/null' EXIT
for url in http://127.0.0.1:18081/health http://127.0.0.1:18082/health; do
  for _ in $(seq 300); do curl -sf "$url" >/dev/null && break; sleep 0.5; done
done

A=http://127.0.0.1:18081/v1
B=http://127.0.0.1:18082/engines/llama.cpp/v1
$PY -m runner bench concurrency --url "$A" --url "$B" --levels "$LEVELS" \
  --max-tokens "$MAX_TOKENS" --out "$OUT" --quiet
$PY -m runner bench cache --url "$A" --url "$B" --out "$OUT" --quiet
