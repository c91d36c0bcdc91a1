# Pulse — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
export PULSE_API_KEY ?= pulse-dev-key
export PULSE_HTTP_ADDR ?= 127.0.0.1:8080

.PHONY: run test services browser tools build lint fmt clean-tests bench-smtp chaos bench bench-hub contract

## Run the whole system locally (every role in one process, mail captured in the dev outbox).
run: services
	cargo build --release -p pulse
	@echo
	@echo "Pulse Hub:   http://$(PULSE_HTTP_ADDR)/hub   (sign in with the dev API key below)"
	@echo "Pulse API:   http://$(PULSE_HTTP_ADDR)   (OpenAPI: http://$(PULSE_HTTP_ADDR)/openapi.json)"
	@echo "Dev API key: $(PULSE_API_KEY)"
	@echo "Mail goes to the dev outbox: curl -H 'Authorization: Bearer $(PULSE_API_KEY)' http://$(PULSE_HTTP_ADDR)/v1/dev/outbox"
	@echo "Replies and bounces: SMTP on $${PULSE_INBOUND_SMTP_ADDR:-127.0.0.1:2525} (docs/inbound.md)"
	@echo
	./target/release/pulse serve all

## Run the whole test suite against the real PostgreSQL, RabbitMQ, Redis and an SMTP server,
## and the Hub's tests in headless Chromium (screenshots land in target/hub-screenshots/); then
## the API contract as schemathesis checks it, with a fixed seed (about a minute).
test: services browser tools clean-tests
	cargo test --workspace --all-targets
	CONTRACT_SEED=1 deploy/local/contract.sh

## Start PostgreSQL, RabbitMQ and Redis when they are not running (installing them if missing).
services:
	@deploy/local/services.sh

## Install Debian's Chromium and chromedriver when missing (the Hub's browser tests).
browser:
	@deploy/local/browser.sh

## Prometheus's promtool in target/tools, to check the alert rules and dashboard queries;
## aiosmtpd (PyPI) in a virtualenv there, the relay requiring TLS and AUTH of the transport tests;
## openapi-python-client (PyPI), the generated client of the contract tests.
tools:
	@deploy/local/promtool.sh
	@deploy/local/aiosmtpd.sh
	@deploy/local/pyclient.sh

## The API contract as schemathesis (PyPI) checks it, every phase, a new seed each run
## (MAX_EXAMPLES=N for more cases per operation; docs/api.md).
contract: services
	@deploy/local/contract.sh

clean-tests:
	@deploy/local/clean-test-leftovers.sh

build:
	cargo build --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

## SMTP sending rate: stock lettre vs Pulse's TCP_NODELAY transport, same server, same run.
bench-smtp:
	cargo run --release -q -p pulse-tests --bin smtp_bench -- 2000 8

## The chaos suite: roles as separate processes, faults injected in rounds, every send classified;
## then the model-based test of taking control (tests/tests/it/model.rs) for MODEL_CASES cases.
CHAOS_ARGS ?= --rounds 20
MODEL_CASES ?= 200
chaos: services
	CARGO_TARGET_DIR=target/chaos cargo build --release -q -p pulse --features failpoints
	CARGO_TARGET_DIR=target/chaos cargo run --release -q -p pulse-tests --bin chaos -- $(CHAOS_ARGS)
	PULSE_MODEL_CASES=$(MODEL_CASES) cargo test -p pulse-tests --test it model -- --nocapture

## Throughput and latency against what the machine allows, measured in the same run (release).
BENCH_ARGS ?=
bench: services
	cargo build --release -q -p pulse
	cargo build --release -q -p pulse-tests --bin bench
	PULSE_BIN=target/release/pulse target/release/bench $(BENCH_ARGS)

## The Hub's pages against 100,000 enrollments and 1,000,000 sends: each page's time next to the
## sign-in page's (tests/src/bin/hub_pages.rs; docs/BENCHMARKS.md).
bench-hub: services
	cargo build --release -q -p pulse-tests --bin hub_pages
	RUST_LOG=error target/release/hub_pages $(BENCH_HUB_ARGS)
