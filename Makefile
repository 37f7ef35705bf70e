# torchbearer: `make run` and `make test` set everything up on a fresh machine (Python >= 3.11 needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run daemon tui test test-slow lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("torchbearer needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the daemon on ./queue in the background (the demo night is queued on first use) and open the dashboard.
run: install
	$(BIN)/torchbearer up --demo configs/examples/night.yaml

daemon: install
	$(BIN)/torchbearer daemon

tui: install
	$(BIN)/torchbearer tui

## The whole default test suite (fast tests; long ones are marked slow).
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

## The long end-to-end tests (several models trained through the daemon); CI runs them too.
test-slow: install
	$(BIN)/pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: none collected

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/training_input.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/download.py
	$(BIN)/python bench/classify.py
	$(BIN)/python bench/prepare.py
	$(BIN)/python bench/explain.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
