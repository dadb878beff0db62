# The two commands of the README, and the set-up they share.
#   make demo   -> a real stability sweep on a built-in workload (embedded defaults)
#   make test   -> the fast test suite (what CI runs)
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(PY) -m pytest

.PHONY: setup demo test test-slow test-e2e lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch pinned: 2.13.0 is the CPU build; a bare `torch` pulls several GB of CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	@# the framework extras (stability.integrations' tests): ~12 s more than .[dev] alone
	@# (67 s into a venv holding only torch); they leave the pinned torch as it is.
	$(PY) -m pip install --quiet -e '.[dev,lightning,transformers]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stabsweep run examples/quick.yaml --workers 2
	$(VENV)/bin/stabsweep export quick -o best.yaml
	$(VENV)/bin/stabsweep train best.yaml --out stabsweep-out/best-run

test: $(STAMP)
	$(PYTEST) -m "not slow and not e2e" -q
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-slow: $(STAMP)
	$(PYTEST) -m "slow and not e2e" -q

test-e2e: $(STAMP)
	$(PYTEST) -m e2e -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/monitor_overhead.py
	$(PY) benchmarks/detection_quality.py

clean:
	rm -rf $(VENV) mlruns mlartifacts ray_results *.db test-output
