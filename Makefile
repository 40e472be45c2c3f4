# Quick start: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LS_VENV := .venv-ls
LS_VERSION ?= 1.23.2

.PHONY: install labelstudio demo test lint unit clean

install: $(VENV)/.installed

# torch first, pinned: it is a CPU wheel on this machine's disk; an unpinned torch pulls CUDA.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The Label Studio server lives in its own environment: it pins versions that must not leak.
labelstudio: $(LS_VENV)/.installed

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q label-studio==$(LS_VERSION)
	touch $@

demo: install
	$(BIN)/activeseg demo demo

lint: install
	$(BIN)/ruff check activeseg tests benchmarks cli.py migrations
	$(BIN)/ruff format --check activeseg tests benchmarks cli.py migrations
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -m "not integration and not slow"

test: install labelstudio lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .mypy_cache .ruff_cache demo
