#!/usr/bin/env bash
# Start or stop the local control plane in the background (used by `make up`, `make down`,
# `make e2e` and `make demo`).
#   hack/local-cp.sh up|down <dir>
set -euo pipefail
cmd=${1:?usage: local-cp.sh up|down <dir>}
dir=${2:?usage: local-cp.sh up|down <dir>}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/pid"
bin=${LOCAL_CP_BIN:-target/debug/local-control-plane}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$cmd" in
  up)
    if running && [ -f "$dir/ready" ]; then
      echo "local control plane already running (pid $(cat "$pidfile"))"
    else
      rm -f "$dir/ready"
      # setsid: the control plane outlives this shell and ignores the terminal's Ctrl-C.
      # SIM_INFRA_NAMESPACE: also serve the simulated infrastructure provider there (make e2e).
      extra=()
      [ -n "${SIM_INFRA_NAMESPACE:-}" ] && extra=(--sim-infra "$SIM_INFRA_NAMESPACE")
      setsid "$bin" up --dir "$dir" --crds config/crd/bases "${extra[@]}" >"$dir/local-cp.log" 2>&1 </dev/null &
      echo $! >"$pidfile"
      for _ in $(seq 1 1800); do
        [ -f "$dir/ready" ] && break
        if ! running; then
          echo "local control plane failed to start; last lines of $dir/local-cp.log:" >&2
          tail -n 30 "$dir/local-cp.log" >&2
          exit 1
        fi
        sleep 0.1
      done
      [ -f "$dir/ready" ] || { echo "local control plane not ready after 180 s (see $dir/local-cp.log)" >&2; exit 1; }
      grep '^startup:' "$dir/local-cp.log" || true
    fi
    echo "kubeconfig: $dir/kubeconfig"
    echo "try:        kubectl --kubeconfig $dir/kubeconfig get crds"
    ;;
  down)
    # The demo's simulated Talos nodes, if any.
    if [ -f "$dir/talos-sim.pid" ]; then
      kill "$(cat "$dir/talos-sim.pid")" 2>/dev/null || true
      rm -f "$dir/talos-sim.pid"
    fi
    if running; then
      pid=$(cat "$pidfile")
      kill -TERM "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "local control plane did not stop in 30 s; killing it" >&2
        kill -KILL "$pid"
      fi
      echo "local control plane stopped"
    else
      echo "local control plane not running"
    fi
    rm -f "$pidfile" "$dir/ready"
    ;;
  *) echo "usage: local-cp.sh up|down <dir>" >&2; exit 2 ;;
esac
