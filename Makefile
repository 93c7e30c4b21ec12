# `make serve` / `make test` bootstrap .venv on first use and reinstall only when
# pyproject.toml changes (tracked by the .venv/.installed stamp).
# RUNNER_GPU=cuda|vulkan|metal|cpu (optional CUDA_ARCH=90) builds llama-cpp-python from source
# for that backend during that install (scripts/install-gpu.sh); `make gpu` forces a rebuild.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
RUNNER_GPU ?=

.PHONY: serve test lint format install clean gpu bench

serve: $(STAMP)
	$(PY) -m runner serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

format: $(STAMP)
	$(PY) -m ruff check --fix src tests
	$(PY) -m ruff format src tests

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev]'
	@if [ -n "$(RUNNER_GPU)" ]; then RUNNER_GPU=$(RUNNER_GPU) PYTHON=$(PY) scripts/install-gpu.sh --if-needed; fi
	touch $(STAMP)

gpu: | $(PY)
	RUNNER_GPU=$(or $(RUNNER_GPU),auto) PYTHON=$(PY) scripts/install-gpu.sh

bench: $(STAMP)
	$(PY) -m runner bench $(or $(ARGS),cache)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
