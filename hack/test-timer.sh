#!/usr/bin/env bash
# cargo's target runner (CARGO_TARGET_<TRIPLE>_RUNNER) while `make test` runs: it times every test
# binary and, through libtest's --report-time, every test in it. One line per binary goes to
# $TEST_TIMES_DIR/binaries.tsv and one per test to $TEST_TIMES_DIR/tests.tsv (seconds, lane, name);
# hack/test-times.sh turns them into the tables of docs/benchmarks.md. Anything that is not a
# libtest binary (cargo run, benches) runs untouched.
set -uo pipefail
bin=$1
shift
dir=${TEST_TIMES_DIR:-}
case "$bin" in
*/debug/deps/*) ;;
*) exec "$bin" "$@" ;;
esac
[ -n "$dir" ] || exec "$bin" "$@"
mkdir -p "$dir"
lane=${CLUSTER_API_VERSION:-default}
name=${bin##*/}
name=${name%-*}
out=$(mktemp)
started=$(date +%s.%N)
# libtest's timing report is unstable; RUSTC_BOOTSTRAP lets the stable test harness print it.
RUSTC_BOOTSTRAP=1 "$bin" "$@" -Z unstable-options --report-time 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
ended=$(date +%s.%N)
awk -v a="$started" -v b="$ended" -v l="$lane" -v n="$name" 'BEGIN { printf "%.1f\t%s\t%s\n", b - a, l, n }' >>"$dir/binaries.tsv"
sed -nE 's/^test (.+) \.\.\. (ok|FAILED) <([0-9.]+)s>$/\3\t'"$lane"'\t'"$name"'::\1/p' "$out" >>"$dir/tests.tsv"
rm -f "$out"
exit "$status"
