#!/usr/bin/env bash
# What an e2e failure leaves to read: every Cluster API, talos-capi and simulated
# infrastructure object of the namespace as YAML, its Events, and `kubectl describe` of the
# control planes. Secrets are listed by name only.
#   hack/e2e-dump.sh <kubeconfig> <namespace> <dir>
set -uo pipefail
kubeconfig=${1:?usage: e2e-dump.sh <kubeconfig> <namespace> <dir>}
ns=${2:?}
out=${3:?}
mkdir -p "$out"
k() { kubectl --kubeconfig "$kubeconfig" -n "$ns" "$@"; }
for kind in clusters machines machinesets machinedeployments machinehealthchecks \
  taloscontrolplanes talosconfigs talosconfigtemplates simclusters simmachines simmachinetemplates; do
  k get "$kind" -o yaml >"$out/$kind.yaml" 2>&1
done
k get events.events.k8s.io --sort-by=.metadata.creationTimestamp >"$out/events.txt" 2>&1
k describe taloscontrolplanes >"$out/taloscontrolplanes.describe.txt" 2>&1
k get secrets >"$out/secrets.txt" 2>&1
k get cluster,taloscontrolplane,machines,talosconfigs >"$out/summary.txt" 2>&1
echo "object dumps of namespace $ns in $out"
