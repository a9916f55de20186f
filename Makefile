# ferfast: `make demo` runs the main job (SSFER's ablation on synthetic faces, `DEMO_ARGS` passes options),
# `make test` runs the tests. Both set up first when needed: a .venv/ with the pinned torch, the native build
# (C++ always, CUDA when nvcc is found) and an editable install. On a machine without a GPU, `make demo` builds
# the C++ kernels only (it trains on the CPU; the CUDA kernels take about 2 of the 3 build minutes), unless a full
# build is already there; `make test` builds the CUDA kernels too (CI compiles them).
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
#: the demo's build: the CUDA kernels only where a GPU is (nvidia-smi lists one; asked only when that build runs)
DEMO_BUILD_CUDA = $(if $(shell nvidia-smi -L 2>/dev/null | grep -m1 GPU),AUTO,OFF)
DEMO_BUILD := $(if $(wildcard $(VENV)/.build-stamp),$(VENV)/.build-stamp,$(VENV)/.build-stamp-demo)

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
	@rm -f $(VENV)/.build-stamp-demo
	@touch $@

$(VENV)/.build-stamp-demo: $(VENV)/.deps-stamp $(NATIVE_SOURCES)
	FERFAST_BUILD_CUDA=$(DEMO_BUILD_CUDA) $(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

info: build
	$(PY) -m ferfast.info

test: build
	$(PY) -m ruff check ferfast tests benchmarks
	$(PY) -m ruff format --check ferfast tests benchmarks
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(DEMO_BUILD)
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
	rm -rf build $(VENV)/.build-stamp $(VENV)/.build-stamp-demo
