#!/usr/bin/env bash
# `make demo`: a local management cluster of real components (etcd, kube-apiserver, Cluster API
# core) with a Cluster reconciled by Cluster API. Later capabilities extend it with simulated
# Talos nodes, a TalosControlPlane reaching Ready, and a rolling upgrade.
set -euo pipefail
dir=${1:-target/local-cp}
hack/local-cp.sh up "$dir"
kc=$(cd "$dir" && pwd)/kubeconfig
kubectl=$(hack/tools/tool.sh kubectl)
k() { echo "+ kubectl $*"; "$kubectl" --kubeconfig "$kc" "$@"; }

echo
echo "== Cluster API core CRDs served by the local kube-apiserver"
k get crds -l cluster.x-k8s.io/provider=cluster-api -o custom-columns=NAME:.metadata.name,ESTABLISHED:.status.conditions[?\(@.type==\"Established\"\)].status 2>/dev/null ||
  k get crds
echo
echo "== A Cluster, reconciled by the real Cluster API manager"
"$kubectl" --kubeconfig "$kc" apply -f - <<'YAML'
apiVersion: cluster.x-k8s.io/v1beta1
kind: Cluster
metadata:
  name: demo
  namespace: default
spec:
  clusterNetwork:
    pods:
      cidrBlocks: ["10.244.0.0/16"]
YAML
k wait cluster/demo --for=jsonpath='{.status.phase}'=Pending --timeout=60s
k get cluster demo -o wide
echo
echo "The local control plane keeps running:"
echo "  export KUBECONFIG=$kc"
echo "  kubectl get clusters -A"
echo "  make down      # stop it"
