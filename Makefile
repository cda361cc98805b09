# bridge: make run (the reference scenario locally), make test (the full suite), make bench.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck unit bench bench-quick rabbitmq venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bridge needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

rabbitmq:
	@bash deploy/local/ensure-rabbitmq.sh

run: venv rabbitmq
	@BIN=$(BIN) bash deploy/local/run.sh

lint: venv
	$(BIN)/ruff check bridge tests benchmarks
	$(BIN)/ruff format --check bridge tests benchmarks

typecheck: venv
	$(BIN)/mypy

test: venv rabbitmq lint typecheck
	$(BIN)/python -m pytest

# Every test but those marked `rabbit` (tests/conftest.py): seconds, and no RabbitMQ needed.
test-fast: venv
	$(BIN)/python -m pytest -m "not rabbit" -q

bench: venv rabbitmq
	$(BIN)/python -m benchmarks.run

bench-quick: venv rabbitmq
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
