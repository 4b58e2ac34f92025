# eXpServer (Python). `make run` and `make test` work on a fresh Linux machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.json

.PHONY: install run serve test test-deps lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/xps-console $(CONFIG)

serve: install
	$(BIN)/xps-server $(CONFIG)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict xps_server

# The fleet tests run a real Redis: installed here when missing, if this user can.
test-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "make test: the fleet tests need redis-server (apt-get install redis-server)" >&2; \
	    exit 1; \
	  fi; }

test: lint test-deps
	$(BIN)/python -m pytest

# Both benchmarks run even if the first misses a budget; the exit code reports either miss.
bench: install
	$(BIN)/python -m bench --all; first=$$?; $(BIN)/python -m bench.console && exit $$first

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
