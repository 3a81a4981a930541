#!/usr/bin/env bash
# For users' CI (needs a container engine): create a kind cluster, install Cluster API core
# with clusterctl, and run the same e2e suite that `make e2e` runs against the local control plane.
set -euo pipefail
name=${KIND_CLUSTER_NAME:-talos-capi-e2e}
. "$(dirname "$0")/tools/versions.env"
for bin in kind kubectl docker; do
  command -v "$bin" >/dev/null || { echo "e2e-kind needs $bin on PATH" >&2; exit 1; }
done
# clusterctl of the same version as the core it installs (built once and cached, or CLUSTERCTL_BIN).
clusterctl=$("$(dirname "$0")/tools/tool.sh" clusterctl)
kubeconfig=$(mktemp)
cleanup() { [ "${KEEP_KIND:-}" = 1 ] || kind delete cluster --name "$name"; rm -f "$kubeconfig"; }
trap cleanup EXIT
kind create cluster --name "$name" --kubeconfig "$kubeconfig" --wait 120s
KUBECONFIG=$kubeconfig "$clusterctl" init --core "cluster-api:$CLUSTER_API_VERSION" --wait-providers
kubectl --kubeconfig "$kubeconfig" apply --server-side -f config/crd/bases
kubectl --kubeconfig "$kubeconfig" wait --for=condition=Established crd --all --timeout=60s
KUBECONFIG=$kubeconfig cargo test --locked -p talos-capi-e2e
