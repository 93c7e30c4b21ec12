#!/usr/bin/env bash
# runner vs llama-server built from the same llama.cpp, in one command: the same raw
# /completions prompts (no chat template, so both servers see the same tokens), 64 tokens each
# with ignore_eos, at 1, 4, 8, 16 and 32 streams, the same slots, context per slot and threads.
# Writes the benchmark's JSON and plot (and both server logs) to $OUT.
#
#   scripts/bench_vs_llama_server.sh                      # the full run (tens of minutes on CPU)
#   LEVELS=1,4 MAX_TOKENS=16 scripts/bench_vs_llama_server.sh   # a short one
#
# Knobs (env): LEVELS (1,4,8,16,32), SLOTS (16), CTX (2048 per slot), THREADS (nproc),
# MAX_TOKENS (64), PROMPT_TOKENS (128), ROUNDS (1), OUT (scripts/results/vs-llama-server),
# LLAMA_SERVER (a llama-server binary; else one is built once into BUILD from LLAMA_CPP_SRC,
# default the llama.cpp vendored by the installed llama-cpp-python's sdist in /tmp/sdist, with
# runner's CPU policy: -march=native minus AMX, as scripts/build-llama.sh builds the wheel).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
LEVELS=${LEVELS:-1,4,8,16,32}
SLOTS=${SLOTS:-16}
CTX=${CTX:-2048}
THREADS=${THREADS:-$(nproc)}
MAX_TOKENS=${MAX_TOKENS:-64}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-scripts/results/vs-llama-server}
VERSION=$($PY -c 'import llama_cpp; print(llama_cpp.__version__)')
LLAMA_CPP_SRC=${LLAMA_CPP_SRC:-/tmp/sdist/llama_cpp_python-$VERSION/vendor/llama.cpp}
BUILD=${BUILD:-${XDG_CACHE_HOME:-$HOME/.cache}/runner/llama-server-$VERSION}

build_llama_server() {
    [[ -d "$LLAMA_CPP_SRC" ]] || {
        echo "no llama.cpp source at $LLAMA_CPP_SRC: set LLAMA_CPP_SRC, or unpack the sdist:" >&2
        echo "  pip download --no-binary :all: --no-deps llama-cpp-python==$VERSION" >&2
        exit 1
    }
    local cflags=""
    if [[ "$(uname -m)" == x86_64 ]]; then
        for isa in amx-tile amx-int8 amx-bf16 amx-fp16 amx-complex; do
            if echo 'int main(void){return 0;}' | cc -x c "-mno-$isa" -fsyntax-only - 2>/dev/null; then
                cflags+=" -mno-$isa"
            fi
        done
    fi
    CFLAGS="$cflags" CXXFLAGS="$cflags" cmake -S "$LLAMA_CPP_SRC" -B "$BUILD" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build "$BUILD" --target llama-server -j "$(nproc)"
}

if [[ -z "${LLAMA_SERVER:-}" ]]; then
    LLAMA_SERVER="$BUILD/bin/llama-server"
    [[ -x "$LLAMA_SERVER" ]] || build_llama_server
fi
[[ "${BUILD_ONLY:-0}" == 1 ]] && exit 0

MODEL_PATH=$($PY -c 'from runner.store import ModelStore, BUNDLED_TAGS; from runner.config import Settings; print(ModelStore(Settings().models_dir).get(BUNDLED_TAGS[0]).path)')
mkdir -p "$OUT"
"$LLAMA_SERVER" -m "$MODEL_PATH" --port 18091 -np "$SLOTS" -c $((SLOTS * CTX)) -t "$THREADS" \
    -tb "$THREADS" --no-webui >"$OUT/llama-server.log" 2>&1 &
LS_PID=$!
$PY -m runner serve --port 18092 --slots "$SLOTS" --ctx-size "$CTX" --threads "$THREADS" \
    --model ai/gemma3 >"$OUT/runner-server.log" 2>&1 &
RS_PID=$!
trap 'kill $LS_PID $RS_PID 2>/dev/null; wait 2>/dev/null' EXIT
for url in http://127.0.0.1:18091/health http://127.0.0.1:18092/health; do
    for _ in $(seq 600); do curl -sf "$url" >/dev/null && break; sleep 0.5; done
done

# runner is A, llama-server B: the report's ratios read runner / llama-server. One server
# runs at a time (the other idles), so they never share the cores.
$PY -m runner bench concurrency --raw --levels "$LEVELS" --rounds "$ROUNDS" \
    --prompt-tokens "$PROMPT_TOKENS" --max-tokens "$MAX_TOKENS" \
    --url http://127.0.0.1:18092/engines/llama.cpp/v1 --url http://127.0.0.1:18091/v1 \
    --out "$OUT" --quiet
