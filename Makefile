# Ramify: the two commands of the README, plus the pieces they are made of.
#   make demo   build, install what is missing, run the end-to-end demo
#   make test   same set-up, then fmt check, clippy and the whole test suite
#   make bench  the benchmarks that back every speed and size claim (prints tables)

CARGO ?= cargo
# Heavy tests run real Postgres servers; two at a time is what two cores allow.
TEST_THREADS ?= 2

.PHONY: all deps build demo test lint fmt-check clippy unit bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

demo: deps
	$(CARGO) build --release -p ramify-cli
	target/release/ramify demo

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint: fmt-check clippy

test: deps lint
	$(CARGO) test --workspace -- --test-threads=$(TEST_THREADS)
	$(CARGO) build -p ramify-cli
	bash e2e/local/run.sh target/debug/ramify

bench: deps
	$(CARGO) bench -p ramify-storage --bench fork
	$(CARGO) build --release -p ramify-cli
	bash e2e/local/bench.sh target/release/ramify

clean:
	$(CARGO) clean
include charts/chart.mk
