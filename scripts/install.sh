#!/usr/bin/env bash
# The venv bootstrap behind `make serve|test|install`: llama.cpp built with runner's CPU policy
# (or taken from runner's wheel cache: no compile on a machine that built it once), runner
# installed in editable mode, then one real decode of the bundled model in a child process.
# If that decode dies by a signal (SIGILL: an instruction this CPU refuses), llama.cpp is
# rebuilt once with RUNNER_CPU=safe and the decode retried; otherwise the install stops with
# the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || python3 -m venv .venv

PYTHON="$PY" scripts/build-llama.sh --if-needed
"$PY" -m pip install -q -e '.[dev]'

set +e
"$PY" -m runner.native smoke
rc=$?
set -e
if [[ $rc -eq 3 && "${RUNNER_CPU:-}" != safe ]]; then
    echo "rebuilding llama.cpp with RUNNER_CPU=safe (no -march=native) and trying again" >&2
    RUNNER_CPU=safe PYTHON="$PY" scripts/build-llama.sh --if-needed
    "$PY" -m runner.native smoke
elif [[ $rc -ne 0 ]]; then
    exit "$rc"
fi
