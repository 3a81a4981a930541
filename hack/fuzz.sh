#!/usr/bin/env bash
# Run every cargo-fuzz target for N seconds (default 60). cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP=1 lets the installed stable toolchain provide them.
set -euo pipefail
seconds=${1:-60}
root=${TALOS_CAPI_CACHE:-$HOME/.cache/talos-capi}/cargo-fuzz
export PATH="$root/bin:$PATH" RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --root "$root"
cd "$(dirname "$0")/../fuzz"
for target in patch_apply config_parse rollout_plan; do
  work="../target/fuzz-corpus/$target"
  mkdir -p "$work"
  echo "== $target for ${seconds}s"
  cargo fuzz run -O "$target" "$work" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096
done
