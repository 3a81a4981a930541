#!/usr/bin/env bash
# clusterctl artifacts, generated from the Helm chart so that the chart and the provider
# components can never disagree (RBAC, probes, securityContext):
#   bootstrap-components.yaml      provider bootstrap-talos: Namespace, TalosConfig* CRDs, and
#                                  the manager running the TalosConfig controller
#   control-plane-components.yaml  provider control-plane-talos: the same for TalosControlPlane*
#   metadata.yaml, cluster-template*.yaml (config/clusterctl)
# Variables clusterctl substitutes: TALOS_CAPI_LOG_LEVEL (default info). The image is
# ghcr.io/talos-capi/talos-capi:<version>; point it elsewhere with clusterctl's `images:` setting.
# Usage: hack/release-manifests.sh OUT_DIR   (make release-manifests writes config/release)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR}
helm=$(hack/tools/tool.sh helm)
version=$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' charts/talos-capi/Chart.yaml)
mkdir -p "$out"

components() {
  local provider=$1 controller=$2 namespace=$3 group=$4
  printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    cluster.x-k8s.io/provider: %s\n' "$namespace" "$provider"
  for crd in charts/talos-capi/crds/"$group"_*.yaml; do
    cat "$crd"
  done
  "$helm" template "talos-capi-$controller" charts/talos-capi --namespace "$namespace" \
    --set "manager.controllers={$controller}" \
    --set replicas=1 \
    --set-string "leaderElection.id=talos-capi-$controller" \
    --set-string "commonLabels.cluster\.x-k8s\.io/provider=$provider" \
    --set-string "image.tag=$version" \
    --set-string 'manager.logLevel=${TALOS_CAPI_LOG_LEVEL:=info}'
}

components bootstrap-talos bootstrap talos-capi-bootstrap-system bootstrap.cluster.x-k8s.io \
  > "$out/bootstrap-components.yaml"
components control-plane-talos controlplane talos-capi-control-plane-system controlplane.cluster.x-k8s.io \
  > "$out/control-plane-components.yaml"
cp config/clusterctl/metadata.yaml config/clusterctl/templates/cluster-template*.yaml "$out/"
