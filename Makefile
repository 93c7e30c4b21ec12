# `make serve` / `make test` bootstrap .venv on first use and reinstall only when
# pyproject.toml changes (tracked by the .venv/.installed stamp).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: serve test lint format install clean

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
	touch $(STAMP)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
