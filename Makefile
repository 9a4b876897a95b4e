# tokenbank: every target bootstraps its own virtualenv from python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test check fmt bench clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install tokenbank with its dev extra (quick when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: install ## Prepare the embedded SQLite ledger under ./var and show where to go next
	$(BIN)/tokenbank db upgrade
	$(BIN)/tokenbank ledger verify
	@echo ""
	@echo "tokenbank's ledger is ready in ./var/tokenbank.db. Try:"
	@echo "  $(BIN)/tokenbank users create alice --email alice@example.com"
	@echo "  $(BIN)/tokenbank grant alice 1000 --reason welcome"
	@echo "  $(BIN)/tokenbank spend alice 250 --key first-chat"
	@echo "  $(BIN)/tokenbank balance alice"
	@echo "  $(BIN)/tokenbank history alice"

test: install ## Run the test suite (SQLite and PostgreSQL)
	$(BIN)/pytest

check: install ## Formatting, lint and strict type checks
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: install ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## Ledger throughput against bare-driver baselines (see docs/benchmarks.md)
	$(BIN)/python -m bench.ledger

clean: ## Remove the virtualenv and caches (keeps ./var)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
