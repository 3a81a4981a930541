SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
LOCAL_CP_DIR := target/local-cp
LOCAL_KUBECONFIG := $(LOCAL_CP_DIR)/kubeconfig
LOCAL_CP_BIN := target/debug/local-control-plane
TOOLS := kube-apiserver kubectl etcd cluster-api cluster-api-config clusterctl cabpt cabpt-config cacppt cacppt-config ipam-in-cluster ipam-in-cluster-config helm talosctl talosctl-1.14 hadolint actionlint
# The Cluster API line of the floor lane (make test-capi-floor); the default lane is in versions.env.
CLUSTER_API_FLOOR_VERSION := $(shell . hack/tools/versions.env && echo "$$CLUSTER_API_FLOOR_VERSION")
# Test binaries of the workspace that need no outside cluster (the e2e suite needs KUBECONFIG).
UNIT_AND_INTEGRATION := --workspace --exclude talos-capi-e2e

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Build (once per version, cached outside the repo) or locate the real components; fails if one can't be had.
	@for t in $(TOOLS); do path=$$(hack/tools/tool.sh $$t) || exit 1; printf '%-20s %s\n' "$$t" "$$path"; done

.PHONY: fmt
fmt: ## Format the Rust code.
	$(CARGO) fmt --all

.PHONY: lint
lint: ## cargo fmt --check, clippy with warnings denied, shell syntax checks, hadolint on the Dockerfiles, actionlint on the workflows.
	$(CARGO) fmt --all -- --check
	"$$(hack/tools/tool.sh hadolint)" Dockerfile tests/e2e/kind/sim.Dockerfile
	"$$(hack/tools/tool.sh actionlint)" -shellcheck= -pyflakes= .github/workflows/*.yaml
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
# The OTLP pass keeps the workspace's feature set (--workspace), so it re-checks only talos-capi
# and the OpenTelemetry crates; `-p talos-capi` would resolve other features and check again.
	$(CARGO) clippy --workspace --all-targets --features talos-capi/otlp --locked -- -D warnings
# The API crate alone, as a tool that depends only on it builds it (kube without its client).
	$(CARGO) check -p talos-capi-api --lib --locked
	for f in .ci/run hack/*.sh hack/tools/*.sh; do bash -n "$$f"; done

.PHONY: crds
crds: ## Regenerate config/crd/bases, the chart's CRDs and docs/api.md from the API types (a test fails on drift).
	$(CARGO) run -q --locked -p talos-capi -- crds --out-dir config/crd/bases --docs docs/api.md
	$(CARGO) run -q --locked -p talos-capi -- crds --out-dir charts/talos-capi/crds

.PHONY: unit
unit: ## Unit and integration tests (integration tests start real etcd/kube-apiserver/Cluster API), and the OTLP build's export test, by cargo test one binary after another.
	$(CARGO) test $(UNIT_AND_INTEGRATION) --locked
	$(CARGO) test --locked --workspace --features talos-capi/otlp --test otlp

# make test's timings (hack/test-times.sh prints them) and how many of its jobs run at once.
TEST_TIMES_DIR ?= target/test-times
export TEST_TIMES_DIR
TEST_JOBS ?= 4
TEST_RUN = hack/test-run.py --jobs $(TEST_JOBS) --floor $(CLUSTER_API_FLOOR_VERSION) \
  --build-json target/test-build/workspace.json

.PHONY: test
test: ## Everything CI runs: lint; every test binary and e2e suite on Cluster API v1.14, what can differ between lines on the v1.12 floor lane, the release binary (TEST_JOBS at a time); the orphan check runs even after a failure.
	@rm -rf $(TEST_TIMES_DIR); status=0; \
	  { hack/timed.sh tools $(MAKE) --no-print-directory tools tools-floor && \
	    hack/timed.sh lint $(MAKE) --no-print-directory lint && \
	    hack/timed.sh build $(MAKE) --no-print-directory test-build && \
	    hack/timed.sh run $(TEST_RUN); } || status=$$?; \
	  hack/no-orphans.sh || status=1; hack/test-times.sh || true; exit $$status

.PHONY: test-fast
test-fast: ## The inner loop: lint, then the unit and integration tests of the default lane (no e2e, no floor lane, no release build).
	@rm -rf $(TEST_TIMES_DIR); status=0; \
	  { $(MAKE) --no-print-directory lint test-build && $(TEST_RUN) --only default --no-e2e --skip-release; } || status=$$?; \
	  hack/no-orphans.sh || status=1; hack/test-times.sh || true; exit $$status

.PHONY: test-build
test-build: ## Run the OTLP build's export test, then build every test binary of the workspace once (their paths in target/test-build) and run the doc tests.
	@mkdir -p target/test-build
# The OTLP test runs here, not with the others: it runs target/debug/talos-capi, which the
# workspace build below replaces with the build without the feature. --workspace keeps the
# workspace's feature set, so only talos-capi and the OpenTelemetry crates build twice.
	$(CARGO) test --locked --workspace --features talos-capi/otlp --test otlp
	$(CARGO) test --locked --workspace --no-run --message-format=json-render-diagnostics >target/test-build/workspace.json
	$(CARGO) test --locked --workspace --doc

.PHONY: tools-floor
tools-floor: ## The floor lane's Cluster API components (CLUSTER_API_FLOOR_VERSION).
	@CLUSTER_API_VERSION=$(CLUSTER_API_FLOOR_VERSION) $(MAKE) --no-print-directory tools

.PHONY: test-capi-floor
test-capi-floor: tools-floor test-build ## The tests that can differ between Cluster API lines, on the floor lane (CLUSTER_API_FLOOR_VERSION, v1.12).
	$(TEST_RUN) --only floor --skip-release

.PHONY: no-orphans
no-orphans: ## Fail if a component started by the tests outlived them (waits up to 15 s).
	@hack/no-orphans.sh

$(LOCAL_CP_BIN): $(shell find crates/testkit -name '*.rs') crates/testkit/Cargo.toml Cargo.lock
	$(CARGO) build --locked -p testkit --bin local-control-plane

.PHONY: up
up: $(LOCAL_CP_BIN) ## Start the local control plane in the background; kubeconfig at target/local-cp/kubeconfig.
	@hack/local-cp.sh up $(LOCAL_CP_DIR)

.PHONY: down
down: ## Stop the local control plane started by `make up`, and a demo left running by `make demo DEMO_ARGS=--keep`.
	@if [ -f target/demo/demo.pid ] && kill -0 "$$(cat target/demo/demo.pid)" 2>/dev/null; then \
	  kill "$$(cat target/demo/demo.pid)"; echo "stopped the demo (pid $$(cat target/demo/demo.pid))"; fi
	@hack/local-cp.sh down $(LOCAL_CP_DIR)

.PHONY: e2e
e2e: $(LOCAL_CP_BIN) ## The e2e suite through a kubeconfig: the local control plane with simulated infrastructure and the manager as a process (all stopped here); on failure, dumps in target/e2e-artifacts.
	$(CARGO) build --locked -p talos-capi --bin talos-capi
	@hack/e2e.sh target/e2e

.PHONY: e2e-kind
e2e-kind: ## For users' CI (docker, kind): the e2e suite on a kind management cluster (Cluster API by clusterctl, talos-capi by Helm, simulated infrastructure as a pod).
	hack/e2e-kind.sh

DEMO_ARGS ?=
.PHONY: demo
demo: tools ## The main job: talos-capi brings up the seeds' HA cluster (3 control planes, 3 workers) on simulated Talos nodes, then upgrades Kubernetes and Talos live (DEMO_ARGS=--keep leaves it running; --static-addresses takes node addresses from Cluster API IPAM).
	$(CARGO) build --locked -p talos-capi -p testkit --bin talos-capi --bin demo
	target/debug/demo --talos-capi target/debug/talos-capi --dir target/demo $(DEMO_ARGS)

KILL_SEED ?= 1
.PHONY: e2e-faults
e2e-faults: tools ## The demo's whole run under fire (kube-apiserver killed and the manager SIGKILLed in each phase, KILL_SEED), its invariants checked, then every secret the cluster holds searched for in the manager's debug log, Events, objects and metrics.
	$(CARGO) build --locked -p talos-capi -p testkit --bin talos-capi --bin demo
	target/debug/demo --talos-capi target/debug/talos-capi --dir target/e2e-faults --faults --kill-seed $(KILL_SEED) --scan-secrets

CHAOS_RUNS ?= 50
.PHONY: chaos
chaos: tools ## Not in CI: CHAOS_RUNS runs of the demo under fire, seeds 1..CHAOS_RUNS (a different kill point each); fails on the first run that does not converge.
	$(CARGO) build --locked -p talos-capi -p testkit --bin talos-capi --bin demo
	hack/chaos.sh $(CHAOS_RUNS)

.PHONY: soak
soak: ## Not in CI: the rollout planner's properties on ROLLOUT_CASES (default 200,000) cases each, then each fuzz target for FUZZ_SECONDS (default 600).
	ROLLOUT_CASES=$${ROLLOUT_CASES:-200000} $(CARGO) test --locked --release -p talos-capi-controller --lib controlplane::rollout::properties
	hack/fuzz.sh $${FUZZ_SECONDS:-600}

.PHONY: walkthrough
walkthrough: tools $(LOCAL_CP_BIN) ## The seed walkthrough by hand: talos-capi gen config, then the real talosctl's apply-config --insecure, bootstrap and etcd members on simulated nodes.
	$(CARGO) build --locked -p talos-sim -p talos-capi
	@hack/demo.sh $(LOCAL_CP_DIR)

.PHONY: cabpt-fixture
cabpt-fixture: tools ## Not in CI: capture again what the real CABPT renders (crates/controller/tests/fixtures/cabpt-v0.6.12), the bytes the adoption comparison is tested with.
	$(CARGO) test --locked -p talos-capi-controller --test cabpt capture_cabpt_bytes -- --ignored

.PHONY: bench
bench: tools ## Benchmarks: config rendering and bundle generation (criterion), local control plane startup.
	$(CARGO) bench --locked -p machineconfig
	$(CARGO) bench --locked -p talos-sim --bench scale
	$(CARGO) run --locked --release -p testkit --bin local-control-plane -- bench --runs 5 --cluster-api

.PHONY: bench-bootstrap
bench-bootstrap: tools ## 1,000 TalosConfigs through the real CABPT and through talos-capi, side by side (BENCH_CLUSTERS, BENCH_MACHINES).
	$(CARGO) bench --locked -p talos-capi-benches --bench bootstrap_vs_cabpt

.PHONY: bench-controlplane
bench-controlplane: tools ## TalosControlPlanes to Available (1, 10 and BENCH_CLUSTERS=100 clusters of 3): time, requests, gate reactions; 1 and 10 side by side with the real CACPPT + CABPT (BENCH_PEERS=only|skip).
	$(CARGO) bench --locked -p talos-capi-benches --bench controlplane

FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: ## Run the cargo-fuzz targets (patch application, config parsing, the rollout planner) for FUZZ_SECONDS each.
	hack/fuzz.sh $(FUZZ_SECONDS)

HOST_TRIPLE = $(shell rustc -vV | sed -n 's/^host: //p')
# make test builds it with the release-ci profile (Cargo.toml: no whole-program LTO), into
# target/release-ci-static, so the benchmarks' target/release-static stays the image's build.
RELEASE_PROFILE ?= release
RELEASE_BIN = target/$(RELEASE_PROFILE)-static/talos-capi
.PHONY: release-binary
release-binary: ## The manager image's binary, statically linked (the Dockerfile's build step): target/release-static/talos-capi.
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile $(RELEASE_PROFILE) --locked -p talos-capi --target $(HOST_TRIPLE)
	mkdir -p $(dir $(RELEASE_BIN))
	cp target/$(HOST_TRIPLE)/$(RELEASE_PROFILE)/talos-capi $(RELEASE_BIN)
	@case "$$(ldd $(RELEASE_BIN) 2>&1)" in \
	  *"statically linked"*|*"not a dynamic executable"*) ;; \
	  *) echo "$(RELEASE_BIN) is dynamically linked:"; ldd $(RELEASE_BIN); exit 1;; esac
	$(RELEASE_BIN) version
	@echo "$(RELEASE_BIN): static, $$(du -h $(RELEASE_BIN) | cut -f1)"

.PHONY: release-manifests
release-manifests: ## clusterctl artifacts from the chart into config/release (components, metadata, templates; a test fails on drift).
	hack/release-manifests.sh config/release

.PHONY: clean
clean: down ## Remove build output (not the tool cache).
	$(CARGO) clean
