# riskserve: `make serve` and `make test` do every set-up step on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODELS ?= models
PORT ?= 8001
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: all install build serve test test-fast tools test-rust test-python lint fmt demo-model bench clean proto

all: build

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Third-party dependencies, pinned.
$(VENV)/.deps: requirements-dev.lock | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.lock
	touch $@

# The package itself, editable, with the Rust extension built in release mode.
$(VENV)/.built: $(VENV)/.deps $(RUST_SOURCES) pyproject.toml
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

install build: $(VENV)/.built

# A demo model, trained by riskserve itself, when the models folder is empty.
demo-model: $(VENV)/.built
	@if [ -z "$$(ls -A $(MODELS) 2>/dev/null)" ]; then \
	  echo ">> $(MODELS)/ is empty: generating 50,000 synthetic card payments and training model 'fraud'"; \
	  mkdir -p $(MODELS) data && \
	  $(VENV)/bin/riskserve datagen --rows 50000 --seed 0 --out data/payments.csv && \
	  $(VENV)/bin/riskserve train --data data/payments.csv --target is_fraud --model fraud \
	      --models $(MODELS) --spec python/riskserve/training/specs/fraud.json --seed 0 ; \
	fi

serve: demo-model
	@echo ">> serving $(MODELS)/ on port $(PORT). In another terminal, score a transaction:"
	@echo "   $(VENV)/bin/riskserve score --server localhost:$(PORT) --model fraud"
	@echo "   $(VENV)/bin/riskserve score --server localhost:$(PORT) --model fraud --json '{\"amount\": 950.0, \"currency\": \"USD\", \"channel\": \"ecommerce\", \"card_present\": false, \"transaction_hour\": 3, \"new_device\": true}'"
	$(VENV)/bin/riskserve serve --models $(MODELS) --port $(PORT)

# Everything: Rust, lint, and every Python test tier (needs cargo and `tools`).
test: test-rust lint test-python

# The unit tier only (markers: tests/conftest.py): no server, no subprocess of
# riskserve, no cargo or lleaves builds, nothing from `tools`.
test-fast: $(VENV)/.built
	$(PY) -m pytest -q -m "unit and not slow and not tools"

# promtool and prometheus (Debian's package) for the rules tests and the real
# Prometheus scrape test; PostgreSQL 15 (Debian's postgresql) for the feedback
# store's tests, which start their own cluster with initdb/pg_ctl. Installed when
# missing.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo ">> installing Debian's prometheus package (promtool, prometheus)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo ">> installing Debian's postgresql package (initdb, pg_ctl, postgres)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

test-rust: $(VENV)/.built
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
	cargo fmt --manifest-path bench/loadgen/Cargo.toml --check
	cargo clippy --manifest-path bench/loadgen/Cargo.toml --release --all-targets -- -D warnings
	cargo test --manifest-path bench/loadgen/Cargo.toml --release

lint: $(VENV)/.built
	$(VENV)/bin/ruff check python tests bench scripts
	$(VENV)/bin/ruff format --check python tests bench scripts
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest riskserve._native --allowlist stubtest-allowlist.txt

test-python: $(VENV)/.built tools
	$(PY) -m pytest -q

fmt:
	cargo fmt --all
	$(VENV)/bin/ruff format python tests bench scripts
	$(VENV)/bin/ruff check --fix python tests bench scripts

proto: $(VENV)/.deps
	$(PY) scripts/gen_proto.py

bench: $(VENV)/.built
	$(PY) bench/transforms.py
	bash bench/run_load.sh

clean:
	rm -rf $(VENV) target python/riskserve/*.so
