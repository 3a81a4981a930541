#!/usr/bin/env bash
# Fail if a component the tests started (anything run from the tool cache) is still running.
# Components get a few seconds to finish shutting down; a `make up` control plane is ignored.
set -euo pipefail
cache=${TALOS_CAPI_CACHE:-$HOME/.cache/talos-capi}/tools
keep=$(cd "$(dirname "$0")/.." && pwd)/target/local-cp

leftovers() {
  local pid exe
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    exe=$(readlink "$d/exe" 2>/dev/null) || continue
    [[ $exe == "$cache"/* ]] || continue
    tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qF "$keep" && continue
    echo "$pid $exe"
  done
}

for _ in $(seq 1 150); do
  [ -z "$(leftovers)" ] && { echo "no orphan processes"; exit 0; }
  sleep 0.1
done
echo "processes left behind by the tests:" >&2
leftovers >&2
exit 1
