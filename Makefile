# ferfast: `make demo` runs the main job (SSFER's ablation on synthetic faces, `DEMO_ARGS` passes options),
# `make test` runs the tests. Both set up first when needed: a .venv/ with the pinned torch, the native build
# (C++ always, CUDA when nvcc is found) and an editable install.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda) $(shell dirname $$(dirname $$(command -v nvcc 2>/dev/null || echo /x/x)) 2>/dev/null))
export CUDA_HOME
TORCH_CUDA_ARCH_LIST ?= 9.0
export TORCH_CUDA_ARCH_LIST
PYTEST_ARGS ?=
DEMO_ARGS ?=

NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(shell find csrc cmake -type f 2>/dev/null)

.PHONY: setup build test test-triton demo bench bench-quick lint format info clean

setup: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: requirements/dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/dev.txt
	@touch $@

build: $(VENV)/.build-stamp

$(VENV)/.build-stamp: $(VENV)/.deps-stamp $(NATIVE_SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

info: build
	$(PY) -m ferfast.info

test: build
	$(PY) -m ruff check ferfast tests benchmarks
	$(PY) -m ruff format --check ferfast tests benchmarks
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: build
	$(PY) -m ferfast.train demo $(DEMO_ARGS)

bench: build
	$(PY) -m pytest benchmarks -q --benchmark-json=benchmarks/results/latest.json $(PYTEST_ARGS)

bench-quick: build
	$(PY) -m pytest benchmarks -q --quick $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check ferfast tests benchmarks
	$(PY) -m ruff format --check ferfast tests benchmarks

# Rewrites the sources in the house format (what `make test` checks).
format: setup
	$(PY) -m ruff format ferfast tests benchmarks

clean:
	rm -rf build $(VENV)/.build-stamp
