# tokenbank: every target bootstraps its own virtualenv from python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
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

run: install ## Start tokenbank at http://127.0.0.1:8000 on the embedded SQLite database (./var)
	@$(BIN)/tokenbank db upgrade
	@echo ""
	@echo "tokenbank is starting at http://127.0.0.1:$(PORT)  (API docs: http://127.0.0.1:$(PORT)/docs)"
	@echo "In another terminal, create an API key for your app and try it:"
	@echo "  $(BIN)/tokenbank apikeys create --name my-app --scope admin"
	@echo "  curl -X PUT -H 'Authorization: Bearer tb_...' -H 'Content-Type: application/json' \\"
	@echo "       -d '{\"email\": \"alice@example.com\"}' http://127.0.0.1:$(PORT)/api/v1/users/alice"
	@echo "Sign up in the browser at http://127.0.0.1:$(PORT)/register. Stop with Ctrl-C."
	@echo ""
	TOKENBANK_PUBLIC_URL=$${TOKENBANK_PUBLIC_URL:-http://127.0.0.1:$(PORT)} \
	  $(BIN)/tokenbank serve --host 127.0.0.1 --port $(PORT)

test: install ## Run the test suite (SQLite and PostgreSQL)
	$(BIN)/pytest

check: install ## Formatting, lint and strict type checks
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: install ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## Ledger and HTTP throughput against baselines run alongside (docs/benchmarks.md)
	$(BIN)/python -m bench.ledger
	$(BIN)/python -m bench.http

clean: ## Remove the virtualenv and caches (keeps ./var)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
