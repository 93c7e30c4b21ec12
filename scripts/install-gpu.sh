#!/usr/bin/env bash
# Kept for existing instructions: the same as scripts/build-llama.sh with RUNNER_GPU=auto.
RUNNER_GPU=${RUNNER_GPU:-auto} exec "$(dirname "$0")/build-llama.sh" "$@"
