# tokenbank: every target bootstraps its own virtualenv from python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
EMULATOR_PORT ?= 12111
LLM_EMULATOR_PORT ?= 12112
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test check fmt bench bench-scale bench-tools soak messages clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install tokenbank with its dev extra (quick when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: install ## Start tokenbank at http://127.0.0.1:8000 on SQLite (./var), with the built-in Stripe and model emulators and the worker
	@BIN=$(BIN) PORT=$(PORT) EMULATOR_PORT=$(EMULATOR_PORT) LLM_EMULATOR_PORT=$(LLM_EMULATOR_PORT) scripts/run-local.sh

# Two test processes, each taking whole files (module fixtures such as a test's own
# emulator stay with their tests); each gets its own scratch database and temporary files.
TEST_PROCESSES ?= 2

test: install ## Run the test suite (SQLite and PostgreSQL), in TEST_PROCESSES processes
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile

check: install ## Formatting, lint and strict type checks
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: install ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## Ledger, HTTP and model gateway throughput against baselines run alongside (docs/benchmarks.md)
	$(BIN)/python -m bench.ledger
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.upstream_client
	$(BIN)/python -m bench.gateway

bench-tools: ## Install Debian's wrk, the load generator of bench-scale, when it is missing (needs root)
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends wrk; }

bench-scale: install bench-tools ## A big ledger, exports, webhook bursts, spends under wrk, many processes, SQLite under load (about 30 minutes)
	$(BIN)/python -m bench.spends
	$(BIN)/python -m bench.sqlite_load
	$(BIN)/python -m bench.webhooks
	$(BIN)/python -m bench.big_ledger

MINUTES ?= 10

soak: install ## Minutes of mixed load with kill -9 and database restarts, then every check (docs/reliability.md)
	$(BIN)/python -m tests.faults.soak --minutes $(MINUTES)

LOCALES := src/tokenbank/web/locales

messages: install ## Extract the pages' strings and merge them into the en and zh-CN catalogs
	$(BIN)/pybabel extract -F babel.cfg -k N_ -k gettext -k ngettext:1,2 --no-location \
		--sort-output --omit-header -o $(LOCALES)/messages.pot .
	$(BIN)/pybabel update -i $(LOCALES)/messages.pot -d $(LOCALES) --width 100 \
		--no-fuzzy-matching --ignore-obsolete --ignore-pot-creation-date

clean: ## Remove the virtualenv and caches (keeps ./var)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
