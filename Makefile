# keyturn — `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test lint bench bench-quick lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP) ## serve on http://127.0.0.1:8000 with SQLite (./keyturn.db)
	$(BIN)/keyturn serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

lint: $(STAMP) ## ruff and mypy --strict
	$(BIN)/ruff check src tests examples bench
	$(BIN)/mypy

test: lint ## lint, then the whole suite (PostgreSQL too when KEYTURN_TEST_POSTGRES_URL is set)
	$(BIN)/pytest

bench: $(STAMP) ## benchmarks against a real keyturn serve (writes bench/results and docs/performance.md)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP) ## a short benchmark run
	$(BIN)/python -m bench.run --quick

lock: ## re-resolve constraints.txt to the newest versions pyproject.toml allows
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean: ## remove the virtualenv and local databases
	rm -rf $(VENV) keyturn.db keyturn.db-wal keyturn.db-shm
