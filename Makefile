# capreg task runner. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 50051
DATA_DIR ?= .capreg
export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help venv run test pytest lint format typecheck proto proto-check bench clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## Create the virtual environment with every dependency

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e clients/python -e '.[dev]'
	touch $@

run: venv ## Serve the registry on 127.0.0.1:$(PORT) (SQLite in $(DATA_DIR), bundled model, demo catalog)
	$(BIN)/capreg serve --demo --port $(PORT) --data-dir $(DATA_DIR)

test: venv lint typecheck proto-check pytest ## Lint, type-check, check generated code, run the whole suite

pytest: venv ## Run the test suite only (SQLite and the PostgreSQL at CAPREG_TEST_PG_URL)
	$(BIN)/pytest

lint: venv ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv ## mypy --strict on the hand-written code
	$(BIN)/mypy

proto: venv ## Regenerate the protobuf stubs into clients/python
	$(BIN)/python scripts/gen_protos.py

proto-check: venv ## Fail if the committed stubs differ from what proto/ generates
	$(BIN)/python scripts/gen_protos.py --check

bench: venv ## Discover benchmark (10k capabilities) beside a null RPC; writes docs/benchmarks.md
	$(BIN)/python bench/discover.py

clean: ## Remove the environment and local data
	rm -rf $(VENV) $(DATA_DIR) .mypy_cache .ruff_cache .pytest_cache
