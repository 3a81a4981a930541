#!/usr/bin/env bash
# CI's Rust build cache (.ci/run, CI=true): a fresh clone's target/ becomes a link to a build
# directory kept outside the repo, like the Go tools, so the dependencies (not this workspace)
# are compiled once per toolchain and Cargo.lock. The workspace's own crates are removed from it
# first: they are built again in every run, as on a fresh machine. The key is the toolchain and
# the locked versions of the dependencies from registries (not the workspace's own crates); only
# the newest key is kept.
# A clone with a target/ of its own is left alone; an empty cache means a cold build, nothing
# else.
#   hack/cargo-cache.sh <repo>
set -euo pipefail
repo=${1:?usage: cargo-cache.sh <repo>}
cd "$repo"
[ -e target ] && { echo "cargo cache: target/ exists, not linked"; exit 0; }
root=${TALOS_CAPI_CACHE:-$HOME/.cache/talos-capi}/cargo-target
key=$({
  rustc -vV
  python3 -c '
import sys, tomllib
lock = tomllib.load(open("Cargo.lock", "rb"))
for p in lock["package"]:
    if "source" in p:
        print(p["name"], p["version"], p["source"])'
} | sha256sum | cut -c1-16)
cache=$root/$key
mkdir -p "$cache"
find "$root" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +

# Every name a workspace crate's artifacts start with: package and target names, '-' as '_'.
names=$(cargo metadata --no-deps --format-version 1 --offline 2>/dev/null ||
  cargo metadata --no-deps --format-version 1)
names=$(python3 -c '
import json, sys
m = json.load(sys.stdin)
names = {p["name"] for p in m["packages"]} | {t["name"] for p in m["packages"] for t in p["targets"]}
print("\n".join(sorted({n.replace("-", "_") for n in names} | names)))' <<<"$names")
# Only cargo's build output is kept: what a run left beside it (logs, e2e directories, the demo)
# goes, as it would with a fresh target/.
find "$cache" -mindepth 1 -maxdepth 1 ! -name debug ! -name release ! -name "$(rustc -vV | sed -n 's/^host: //p')" \
  ! -name CACHEDIR.TAG ! -name .rustc_info.json -exec rm -rf {} +
pruned=0
for profile in "$cache"/debug "$cache"/release "$cache"/*/release "$cache"/*/release-ci; do
  [ -d "$profile" ] || continue
  rm -rf "$profile/incremental"
  while read -r name; do
    for d in deps .fingerprint build; do
      for f in "$profile/$d/$name"-*; do
        [ -e "$f" ] || continue
        rm -rf "$f"
        pruned=$((pruned + 1))
      done
    done
  done <<<"$names"
done
ln -s "$cache" target
echo "cargo cache: target -> $cache ($(du -sh "$cache" | cut -f1), $pruned workspace artifacts removed)"
