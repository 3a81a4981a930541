#!/usr/bin/env bash
# `make e2e`: the e2e suite against the local control plane. It starts the control plane
# (etcd, kube-apiserver, Cluster API core, talos-capi's CRDs) with the simulated infrastructure
# provider serving E2E_NAMESPACE, runs `talos-capi manager` for that namespace as a process with
# the chart's RBAC (acting as its ServiceAccount), runs the suite through the kubeconfig alone,
# and stops everything it started. On failure it collects logs and object dumps into
# E2E_ARTIFACTS (default target/e2e-artifacts).
#   hack/e2e.sh <dir>      (E2E_TEST_BINS: the suite's prebuilt test binaries, else cargo test
#                           builds and runs them)
set -euo pipefail
dir=${1:?usage: e2e.sh <dir>}
ns=${E2E_NAMESPACE:-talos-capi-e2e}
artifacts=${E2E_ARTIFACTS:-target/e2e-artifacts}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
kubeconfig=$dir/kubeconfig

SIM_INFRA_NAMESPACE=$ns hack/local-cp.sh up "$dir"

# The manager gets the chart's RBAC and nothing more: the chart's ServiceAccount, roles and
# bindings (as `helm template` renders them) are applied, and the manager acts as that
# ServiceAccount (impersonated, as its token would authenticate it), so a rule the chart lacks
# fails the suite.
release_ns=talos-capi-system
kubectl=$(hack/tools/tool.sh kubectl)
helm=$(hack/tools/tool.sh helm)
"$kubectl" --kubeconfig "$kubeconfig" create namespace "$release_ns" --dry-run=client -o yaml |
  "$kubectl" --kubeconfig "$kubeconfig" apply -f - >/dev/null
"$helm" template talos-capi charts/talos-capi --namespace "$release_ns" \
  --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml |
  "$kubectl" --kubeconfig "$kubeconfig" apply -f - >/dev/null
sa=$("$kubectl" --kubeconfig "$kubeconfig" -n "$release_ns" get serviceaccounts -l app.kubernetes.io/name=talos-capi -o jsonpath='{.items[0].metadata.name}')
[ -n "$sa" ] || { echo "the chart rendered no ServiceAccount" >&2; exit 1; }
manager_kubeconfig=$dir/manager-as-sa.kubeconfig
"$kubectl" --kubeconfig "$kubeconfig" config view --raw -o json |
  SA="system:serviceaccount:$release_ns:$sa" NS="$release_ns" python3 -c '
import json, os, sys
config = json.load(sys.stdin)
for user in config["users"]:
    user["user"]["as"] = os.environ["SA"]
    user["user"]["as-groups"] = ["system:serviceaccounts", "system:serviceaccounts:" + os.environ["NS"], "system:authenticated"]
json.dump(config, sys.stdout)' >"$manager_kubeconfig"
chmod 600 "$manager_kubeconfig"
# The identity is the ServiceAccount's, not the admin's: it may not delete Secrets.
if "$kubectl" --kubeconfig "$manager_kubeconfig" auth can-i delete secrets -A >/dev/null 2>&1; then
  echo "the manager's kubeconfig still acts as admin" >&2
  exit 1
fi
echo "talos-capi manager: as ServiceAccount $release_ns/$sa (the chart's RBAC)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
metrics=$(port)
health=$(port)
target/debug/talos-capi manager --kubeconfig "$manager_kubeconfig" --namespace "$ns" \
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
# E2E_TEST_BINS: the suite's test binaries, already built (make test builds every binary first),
# run one after another as cargo test would.
if [ -n "${E2E_TEST_BINS:-}" ]; then
  for bin in $E2E_TEST_BINS; do
    (cd tests/e2e && KUBECONFIG=$kubeconfig E2E_NAMESPACE=$ns "$bin" --nocapture) || status=$?
  done
else
  KUBECONFIG=$kubeconfig E2E_NAMESPACE=$ns cargo test --locked -p talos-capi-e2e -- --nocapture || status=$?
fi
if [ "$status" != 0 ]; then
  hack/e2e-dump.sh "$kubeconfig" "$ns" "$artifacts"
  cp "$dir/manager.log" "$dir/local-cp.log" "$artifacts/" 2>/dev/null || true
  echo "e2e failed: logs and object dumps in $artifacts" >&2
fi
exit "$status"
