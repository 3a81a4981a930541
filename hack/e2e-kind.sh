#!/usr/bin/env bash
# `make e2e-kind`, for users' CI (needs docker and kind): the same e2e suite as `make e2e`, with
# a kind cluster as the management cluster.
#  1. Images: the manager (the repository's Dockerfile) and the simulated infrastructure
#     (tests/e2e/kind/sim.Dockerfile, binaries built here), loaded into kind.
#  2. Cluster API core by clusterctl, talos-capi by its Helm chart, the simulated
#     infrastructure by tests/e2e/kind/sim-infra.yaml. The simulated Talos nodes and workload
#     kube-apiservers listen on loopback addresses, so Cluster API's controller, talos-capi's
#     manager and the simulator share the kind node's network (hostNetwork).
#  3. The suite through the kind kubeconfig; on failure, object dumps and the three
#     controllers' logs in E2E_ARTIFACTS (default target/e2e-artifacts) for the workflow to upload.
# KEEP_KIND=1 leaves the cluster running.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${KIND_CLUSTER_NAME:-talos-capi-e2e}
ns=talos-capi-e2e
artifacts=${E2E_ARTIFACTS:-target/e2e-artifacts}
. hack/tools/versions.env
for bin in kind kubectl docker cargo; do
  command -v "$bin" >/dev/null || { echo "e2e-kind needs $bin on PATH" >&2; exit 1; }
done
clusterctl=$(hack/tools/tool.sh clusterctl)
helm=$(hack/tools/tool.sh helm)
triple=$(rustc -vV | sed -n 's/^host: //p')

echo "== images"
docker build -t talos-capi:e2e .
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p testkit \
  --bin local-control-plane --target "$triple"
context=$(mktemp -d)
kubeconfig=$(mktemp)
cleanup() {
  rm -rf "$context"
  [ "${KEEP_KIND:-}" = 1 ] || kind delete cluster --name "$name"
  rm -f "$kubeconfig"
}
trap cleanup EXIT
cp "target/$triple/release/local-control-plane" "$(hack/tools/tool.sh kube-apiserver)" \
  "$(hack/tools/tool.sh etcd)" "$context/"
docker build -t talos-capi-sim:e2e -f tests/e2e/kind/sim.Dockerfile "$context"

echo "== kind, Cluster API $CLUSTER_API_VERSION, talos-capi, simulated infrastructure"
kind create cluster --name "$name" --kubeconfig "$kubeconfig" --wait 120s
kind load docker-image --name "$name" talos-capi:e2e talos-capi-sim:e2e
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }
host_network='{"spec":{"template":{"spec":{"hostNetwork":true,"dnsPolicy":"ClusterFirstWithHostNet"}}}}'
KUBECONFIG=$kubeconfig "$clusterctl" init --core "cluster-api:$CLUSTER_API_VERSION" --wait-providers
k -n capi-system patch deployment capi-controller-manager --patch "$host_network"
# On the node's network the probe and metrics ports move off Cluster API's (9440, 8443).
"$helm" --kubeconfig "$kubeconfig" install talos-capi charts/talos-capi \
  --namespace talos-capi-system --create-namespace \
  --set image.repository=talos-capi --set image.tag=e2e --set image.pullPolicy=Never \
  --set healthProbePort=9450 --set metrics.port=8090
k -n talos-capi-system patch deployment talos-capi --patch "$host_network"
k apply -f tests/e2e/kind/sim-infra.yaml
for d in capi-system/capi-controller-manager talos-capi-system/talos-capi sim-infra-system/sim-infra; do
  k -n "${d%/*}" rollout status "deployment/${d#*/}" --timeout=300s
done

echo "== the e2e suite"
status=0
KUBECONFIG=$kubeconfig E2E_NAMESPACE=$ns cargo test --locked -p talos-capi-e2e -- --nocapture || status=$?
if [ "$status" != 0 ]; then
  hack/e2e-dump.sh "$kubeconfig" "$ns" "$artifacts"
  for d in capi-system/capi-controller-manager talos-capi-system/talos-capi sim-infra-system/sim-infra; do
    k -n "${d%/*}" logs "deployment/${d#*/}" --all-containers >"$artifacts/${d#*/}.log" 2>&1 || true
  done
  echo "e2e-kind failed: logs and object dumps in $artifacts" >&2
fi
exit "$status"
