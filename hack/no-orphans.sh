#!/usr/bin/env bash
# Fail if a process the tests started is still running: anything run from the tool cache, and
# anything testkit started (its processes carry TALOS_CAPI_TESTKIT_CHILD=1 in their environment,
# whatever binary they run: talos-sim, managers, peers, binaries given through the override
# variables). Processes get a few seconds to finish shutting down; a `make up` / demo control
# plane (target/local-cp) is ignored.
set -euo pipefail
cache=${TALOS_CAPI_CACHE:-$HOME/.cache/talos-capi}/tools
keep=$(cd "$(dirname "$0")/.." && pwd)/target/local-cp

leftovers() {
  local pid exe
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [ "$pid" = "$$" ] && continue
    exe=$(readlink "$d/exe" 2>/dev/null) || continue
    if [[ $exe != "$cache"/* ]] &&
      ! tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qx 'TALOS_CAPI_TESTKIT_CHILD=1'; then
      continue
    fi
    # A process that ends meanwhile has no cmdline left: stderr goes first, so the failed
    # redirection says nothing.
    tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -qF "$keep" && continue
    echo "$pid $exe $(tr '\0' ' ' 2>/dev/null <"$d/cmdline" | cut -c1-160)"
  done
}

for _ in $(seq 1 150); do
  [ -z "$(leftovers)" ] && { echo "no orphan processes"; exit 0; }
  sleep 0.1
done
echo "processes left behind by the tests:" >&2
leftovers >&2
exit 1
