# `make serve` / `make test` bootstrap .venv on first use (scripts/install.sh) and reinstall
# only when pyproject.toml or the build scripts change (tracked by the .venv/.installed stamp).
# The bootstrap builds llama.cpp with runner's CPU policy (scripts/build-llama.sh: native minus
# AMX on x86-64), keeps the wheel in ~/.cache/runner/wheels so a second install compiles
# nothing, and runs one real decode of the bundled model before anything else starts.
# RUNNER_GPU=cuda|vulkan|metal|cpu (optional CUDA_ARCH=90) builds for that backend;
# RUNNER_CPU=safe builds without -march=native. `make test` also installs the system parts
# the tests drive (scripts/system-deps.sh).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# LangSmith's pytest plugin comes with a dependency and only slows each test run's start.
PYTEST_QUIET_PLUGINS := -p no:langsmith_plugin
RUNNER_GPU ?=
RUNNER_CPU ?=
export RUNNER_GPU RUNNER_CPU

.PHONY: serve test test-fast lint format install clean gpu rebuild-llama smoke system-deps bench

serve: $(STAMP)
	$(PY) -m runner serve $(ARGS)

# The whole suite, with the 25 slowest steps listed at the end (where the time goes).
test: $(STAMP) system-deps
	$(PY) -m pytest -q $(PYTEST_QUIET_PLUGINS) --durations=25 $(ARGS)

# The fast layer: every test that neither loads the model nor starts a server (tests/conftest.py
# marks those `slow` by the fixtures they use), under a minute. schemathesis and hypothesis
# serve only the fuzz test, which is slow: their plugins stay unloaded.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_QUIET_PLUGINS) -p no:hypothesispytest \
		-p no:schemathesis $(ARGS)

system-deps:
	scripts/system-deps.sh

lint: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

format: $(STAMP)
	$(PY) -m ruff check --fix src tests
	$(PY) -m ruff format src tests

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml scripts/install.sh scripts/build-llama.sh | $(PY)
	PYTHON=$(PY) scripts/install.sh
	touch $(STAMP)

# Rebuild llama.cpp for a GPU backend (RUNNER_GPU=auto picks cuda, metal or cpu).
gpu: | $(PY)
	RUNNER_GPU=$(or $(RUNNER_GPU),auto) PYTHON=$(PY) scripts/build-llama.sh
	$(PY) -m runner.native smoke

# Compile llama.cpp again even when the wheel cache has this build (RUNNER_CPU=safe: no
# -march=native, for a CPU the native build faults on).
rebuild-llama: | $(PY)
	PYTHON=$(PY) scripts/build-llama.sh --force
	$(PY) -m runner.native smoke

smoke: $(STAMP)
	$(PY) -m runner.native smoke

bench: $(STAMP)
	$(PY) -m runner bench $(or $(ARGS),cache)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
