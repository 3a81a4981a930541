#!/usr/bin/env bash
# `make demo`: the main job on this machine, with real components only.
#  1. A local management cluster: etcd, kube-apiserver and the Cluster API core manager, with
#     talos-capi's CRDs; a Cluster adopts a TalosControlPlane from the seed article.
#  2. The seed walkthrough (talosctl gen config / apply-config --insecure / bootstrap) against
#     three simulated Talos nodes, with configs from `talos-capi gen config` and the real talosctl.
# Later capabilities extend it with the controllers driving the same nodes. `make down` stops all.
set -euo pipefail
dir=${1:-target/local-cp}
hack/local-cp.sh up "$dir"
dir=$(cd "$dir" && pwd)
kc=$dir/kubeconfig
kubectl=$(hack/tools/tool.sh kubectl)
talosctl=$(hack/tools/tool.sh talosctl)
k() { echo "+ kubectl $*"; "$kubectl" --kubeconfig "$kc" "$@"; }
t() { echo "+ talosctl $*"; "$talosctl" "$@"; }

echo
echo "== CRDs served by the local kube-apiserver (Cluster API core and talos-capi)"
k get crds -o custom-columns='NAME:.metadata.name,CONTRACT:.metadata.labels.cluster\.x-k8s\.io/v1beta1'

echo
echo "== The seed's TalosControlPlane, adopted by a Cluster through the contract labels"
"$kubectl" --kubeconfig "$kc" apply --server-side -f - <<'YAML'
apiVersion: controlplane.cluster.x-k8s.io/v1alpha3
kind: TalosControlPlane
metadata:
  name: production-control-plane
  namespace: default
  labels:
    cluster.x-k8s.io/cluster-name: demo
spec:
  replicas: 3
  version: "v1.29.0"
  infrastructureTemplate:
    apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
    kind: ProxmoxMachineTemplate
    name: control-plane-template
  controlPlaneConfig:
    controlplane:
      generateType: controlplane
  rolloutStrategy:
    type: "RollingUpdate"
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
---
apiVersion: cluster.x-k8s.io/v1beta1
kind: Cluster
metadata:
  name: demo
  namespace: default
spec:
  clusterNetwork:
    pods:
      cidrBlocks: ["10.244.0.0/16"]
  controlPlaneRef:
    apiVersion: controlplane.cluster.x-k8s.io/v1alpha3
    kind: TalosControlPlane
    name: production-control-plane
YAML
k wait cluster/demo --for=jsonpath='{.status.phase}' --timeout=60s >/dev/null
k get cluster demo
k get tcp production-control-plane -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} owns the TalosControlPlane{"\n"}'

echo
echo "== Three simulated Talos nodes (talos-sim), driven by the real talosctl"
sim_log=$dir/talos-sim.log
if [ -f "$dir/talos-sim.pid" ] && kill -0 "$(cat "$dir/talos-sim.pid")" 2>/dev/null; then
  kill "$(cat "$dir/talos-sim.pid")"
  sleep 0.5
fi
setsid target/debug/talos-sim --nodes 3 >"$sim_log" 2>&1 </dev/null &
echo $! >"$dir/talos-sim.pid"
for _ in $(seq 1 100); do [ "$(grep -c NodeUp "$sim_log" || true)" -ge 3 ] && break; sleep 0.1; done
mapfile -t nodes < <(grep -o 'address: "[0-9.]*"' "$sim_log" | cut -d'"' -f2 | sort -u)
n0=${nodes[0]}
echo "nodes: ${nodes[*]}"

work=$dir/demo-talos
rm -rf "$work" && mkdir -p "$work"
echo "+ talos-capi gen config mi-cluster https://$n0:6443"
target/debug/talos-capi gen config mi-cluster "https://$n0:6443" -o "$work" >/dev/null
sed -i "0,/endpoints: \[\]/s//endpoints: [$n0]/" "$work/talosconfig"
t -e "$n0" -n "$n0" version --insecure | grep -E 'Tag|NODE' || true
for n in "${nodes[@]}"; do
  t -e "$n" -n "$n" apply-config --insecure --file "$work/controlplane.yaml"
done
for _ in $(seq 1 100); do
  [ "$(grep -c 'configured: true' "$sim_log" || true)" -ge 3 ] && break
  sleep 0.1
done
tc=(--talosconfig "$work/talosconfig" -e "$n0")
t "${tc[@]}" -n "$n0" bootstrap
sleep 1
t "${tc[@]}" -n "$n0" etcd members
t "${tc[@]}" -n "$(IFS=,; echo "${nodes[*]}")" version | grep -E 'NODE|Tag'

echo
echo "Everything keeps running:"
echo "  export KUBECONFIG=$kc"
echo "  $talosctl --talosconfig $work/talosconfig -e $n0 -n $n0 service"
echo "  make down      # stop the local control plane and the simulated nodes"
