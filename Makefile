# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo demo-deployment test test-fast lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedlab simulate

# A server and four lab processes over TLS on loopback, each lab with only its own file.
demo-deployment: $(STAMP)
	$(BIN)/fedlab demo --deployment

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m tests.parallel

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/simulation.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
