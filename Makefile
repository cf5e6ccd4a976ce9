# Two jobs: `make bench` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs camzoo on first use. Override TORCH for another platform,
# e.g. `make test TORCH="torch torchvision"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: test bench install gpu-check

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# ruff first: it takes a second, and a lint error should not wait for the suite. The suite runs on
# TEST_WORKERS processes (pytest-xdist; each test runs torch on one thread), each file on one worker
# (its fixtures built once; tests/conftest.py builds the expensive session fixtures once per run): about 2.5-3.5 min on
# 2 cores (docs/performance.md). Bytecode is cached even where the environment sets
# PYTHONDONTWRITEBYTECODE: each worker and each process a test starts would otherwise compile
# camzoo and rewrite the test modules again (6 s of each worker's collection).
TEST_WORKERS ?= 2

test: install
	$(BIN)/ruff check .
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Two processes of one thread each score faster than one of two threads on a small CPU model
# (docs/performance.md); BENCH_NPROC=1 runs a single process.
BENCH_NPROC ?= 2

bench: install
	$(BIN)/camzoo bench --preset quick --nproc $(BENCH_NPROC) --out results/quick

# The GPU path: CUDA tests, speed scripts with --device cuda, the standard preset; numbers to
# docs/gpu-check.md with the GPU named. Without CUDA it runs the (skipping) tests and says so.
gpu-check: install
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh
