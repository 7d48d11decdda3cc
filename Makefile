# Two entry points (README quick start): `make run` and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true

.PHONY: setup run test test-all lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)  ## fetch ml-100k, validate, preprocess (and later stages) as one Prefect flow run
	$(BIN)/seqrec run --workdir .seqrec --summary-json .seqrec/last-summary.json

test: $(STAMP)  ## the default suite (slow end-to-end tests excluded)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -q

lint: $(STAMP)  ## ruff over the code, tests and benchmarks (rules in pyproject.toml)
	$(BIN)/ruff check seqrec flows serving tasks models validation tests benchmarks

typecheck: $(STAMP)  ## mypy on the core packages (the CLI on top is left to its tests)
	$(BIN)/mypy seqrec serving models validation

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/preprocess_bench.py --sizes 1000000 10000000

clean:
	rm -rf .seqrec .pytest_cache
