# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
PERSONA ?= keeper

export HF_HUB_OFFLINE := 1
# llama-cpp-python compiles once on a fresh machine; use every core for it
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One install serves both targets: the runtime extras (.[all]) plus the dev tools.
# torch first, pinned to the CPU build: otherwise pip may pick a multi-GB CUDA build.
TORCH ?= torch==2.13.0
$(DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[all,dev]"
	touch $@

demo: $(DEPS)
	$(BIN)/bots ingest
	$(BIN)/bots chat --persona $(PERSONA)

test: $(DEPS)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: $(DEPS)
	$(BIN)/python bench/core_bench.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
