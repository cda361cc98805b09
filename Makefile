# bridge: make run (the reference scenario locally), make test (the full suite), make bench.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck unit bench bench-quick rabbitmq prometheus cluster-up cluster-down venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bridge needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

rabbitmq:
	@bash deploy/local/ensure-rabbitmq.sh

# promtool and prometheus, for the alert rules and the dashboard check (tests/test_prometheus.py).
prometheus:
	@bash deploy/local/ensure-prometheus.sh

# A local 3-node RabbitMQ cluster (ports 5681-5683) to try `[rabbitmq] urls`; tests/test_cluster.py
# starts and stops its own.
cluster-up: rabbitmq
	@bash deploy/local/cluster.sh up

cluster-down:
	@bash deploy/local/cluster.sh down

run: venv rabbitmq
	@BIN=$(BIN) bash deploy/local/run.sh

lint: venv
	$(BIN)/ruff check bridge tests benchmarks
	$(BIN)/ruff format --check bridge tests benchmarks

typecheck: venv
	$(BIN)/mypy

test: venv rabbitmq prometheus lint typecheck
	$(BIN)/python -m pytest

# Every test but those marked `rabbit` or `prometheus` (tests/conftest.py): seconds, and neither
# RabbitMQ nor Prometheus needed.
test-fast: venv
	$(BIN)/python -m pytest -m "not rabbit and not prometheus" -q

bench: venv rabbitmq
	$(BIN)/python -m benchmarks.run

bench-quick: venv rabbitmq
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
