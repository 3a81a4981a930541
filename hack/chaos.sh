#!/usr/bin/env bash
# `make chaos`: the demo under fire, once per seed 1..N. Each run kills kube-apiserver and SIGKILLs
# the manager at seeded points in the bootstrap, the rolling upgrade, the Talos upgrade, the scale
# up, the scale down and the deletion, then checks the invariants (etcd bootstrapped once, quorum
# kept, bundle and kubeconfig written once, no machine made or removed twice, nothing left).
set -euo pipefail
runs=${1:-50}
cd "$(dirname "$0")/.."
log=target/chaos
mkdir -p "$log"
started=$(date +%s)
for seed in $(seq 1 "$runs"); do
  if ! target/debug/demo --talos-capi target/debug/talos-capi --dir target/chaos/run \
      --faults --kill-seed "$seed" >"$log/seed-$seed.log" 2>&1; then
    echo "seed $seed did not converge: $log/seed-$seed.log"
    tail -20 "$log/seed-$seed.log"
    exit 1
  fi
  echo "seed $seed: $(grep -o 'survived.*' "$log/seed-$seed.log" | head -c 60)… ($(grep -o 'demo done in [0-9]* s' "$log/seed-$seed.log"))"
done
echo "chaos: $runs of $runs runs converged in $(( $(date +%s) - started )) s (6 kube-apiserver restarts and 6 manager SIGKILLs each)"
