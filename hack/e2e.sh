#!/usr/bin/env bash
# `make e2e`: the e2e suite against the local control plane. It starts the control plane
# (etcd, kube-apiserver, Cluster API core, talos-capi's CRDs) with the simulated infrastructure
# provider serving E2E_NAMESPACE, runs `talos-capi manager` for that namespace as a process,
# runs the suite through the kubeconfig alone, and stops everything it started. On failure it
# collects logs and object dumps into E2E_ARTIFACTS (default target/e2e-artifacts).
#   hack/e2e.sh <dir>
set -euo pipefail
dir=${1:?usage: e2e.sh <dir>}
ns=${E2E_NAMESPACE:-talos-capi-e2e}
artifacts=${E2E_ARTIFACTS:-target/e2e-artifacts}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
kubeconfig=$dir/kubeconfig

SIM_INFRA_NAMESPACE=$ns hack/local-cp.sh up "$dir"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
metrics=$(port)
health=$(port)
target/debug/talos-capi manager --kubeconfig "$kubeconfig" --namespace "$ns" \
  --metrics-bind-address "127.0.0.1:$metrics" --health-probe-bind-address "127.0.0.1:$health" \
  >"$dir/manager.log" 2>&1 </dev/null &
manager=$!
stop() {
  kill "$manager" 2>/dev/null && wait "$manager" 2>/dev/null || true
  hack/local-cp.sh down "$dir"
}
trap stop EXIT
echo "talos-capi manager: pid $manager, log $dir/manager.log"

status=0
KUBECONFIG=$kubeconfig E2E_NAMESPACE=$ns cargo test --locked -p talos-capi-e2e -- --nocapture || status=$?
if [ "$status" != 0 ]; then
  hack/e2e-dump.sh "$kubeconfig" "$ns" "$artifacts"
  cp "$dir/manager.log" "$dir/local-cp.log" "$artifacts/" 2>/dev/null || true
  echo "e2e failed: logs and object dumps in $artifacts" >&2
fi
exit "$status"
