# Ramify: the two commands of the README, plus the pieces they are made of.
#   make demo   build, install what is missing, run the end-to-end demo
#   make test   same set-up, then fmt check, clippy and the whole test suite (as root also
#               the Kubernetes tests: a real API server, and the single-node test cluster)
#   make bench  the benchmarks that back every speed and size claim (prints tables)

CARGO ?= cargo
# Heavy tests run real Postgres servers; two at a time is what two cores allow.
TEST_THREADS ?= 2

.PHONY: all deps build demo test lint fmt-check clippy unit bench clean crds-check k8s-binaries install krew

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

# The Kubernetes binaries (kube-apiserver, etcd, ... built from source by e2e/cluster)
# serve the controller test and the test cluster; built only as root, which installing
# the cluster's Debian packages needs. When they exist the controller test must run.
K8S_BIN ?= /var/tmp/ramify-k8s/bin

test: deps lint crds-check tools k8s-binaries chart-test
	RAMIFY_REQUIRE_K8S=$$([ -x $(K8S_BIN)/kube-apiserver ] && [ -x $(K8S_BIN)/etcd ] && echo 1) \
	  $(CARGO) test --workspace -- --test-threads=$(TEST_THREADS)
	$(CARGO) build -p ramify-cli
	bash e2e/local/run.sh target/debug/ramify
	bash e2e/local/workflows.sh target/debug/ramify
	bash e2e/local/attacks.sh target/debug/ramify
	bash e2e/local/follow.sh target/debug/ramify
	bash e2e/local/backup.sh target/debug/ramify
	CARGO="$(CARGO)" bash e2e/k8s/make-test.sh

# The CRD YAML in crds/ and charts/ramify-crds must be what the Rust types generate.
crds-check:
	$(CARGO) run -q -p ramify-crd --bin crdgen -- --check

k8s-binaries:
	@if [ "$$(id -u)" = 0 ]; then bash e2e/cluster/build.sh; \
	else echo "note: not root, so the Kubernetes binaries are not built (make cluster-build as root);"; \
	  echo "      the controller test against a real API server and the test cluster are skipped"; fi

bench:
	@RAMIFY_BENCH_DEPS=1 bash scripts/install-deps.sh
	$(CARGO) bench -p ramify-storage --bench fork
	$(CARGO) bench -p ramify-storage --bench accounting
	$(CARGO) bench -p ramify-storage --bench backup
	$(CARGO) build --release -p ramify-cli
	bash e2e/local/bench.sh target/release/ramify
	bash e2e/local/bench-workflows.sh target/release/ramify
	bash e2e/local/bench-follow.sh target/release/ramify
	bash e2e/local/bench-scale.sh target/release/ramify
	$(CARGO) bench -p ramify-diff --bench schema_diff

# The checkers of what Ramify publishes, built once from their Go modules into
# /var/tmp/ramify-tools/bin (scripts/build-tools.sh): krew 0.4.3's validate-krew-manifest,
# which installs the krew package from a loopback server, and actionlint with shellcheck
# on every workflow in examples/. Under `make test` the chart tests must run them.
.PHONY: tools
tools:
	@bash scripts/build-tools.sh
test: export RAMIFY_REQUIRE_TOOLS = 1

# `ramify` and its kubectl plugin name (`kubectl ramify …` drives the current kubeconfig
# context): PREFIX=/usr/local by default.
PREFIX ?= /usr/local
install:
	$(CARGO) build --release -p ramify-cli
	install -D -m 0755 target/release/ramify $(DESTDIR)$(PREFIX)/bin/ramify
	ln -sf ramify $(DESTDIR)$(PREFIX)/bin/kubectl-ramify

# The krew archive and manifest of this build (target/krew/).
krew:
	$(CARGO) build --release -p ramify-cli
	bash plugins/package.sh target/release/ramify target/krew

clean:
	$(CARGO) clean
include e2e/cluster/cluster.mk

include charts/chart.mk

include e2e/soak/soak.mk
