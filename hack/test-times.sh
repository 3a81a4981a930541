#!/usr/bin/env bash
# The timing tables of a `make test` run (docs/benchmarks.md): seconds per step, per test binary
# and lane, and the 20 slowest tests. Reads what hack/test-run.py and hack/timed.sh
# wrote to TEST_TIMES_DIR (default target/test-times).
set -euo pipefail
dir=${1:-${TEST_TIMES_DIR:-target/test-times}}
[ -d "$dir" ] || { echo "no timings in $dir (run make test first)" >&2; exit 1; }
table() { # title, file, header, how many rows
  [ -s "$2" ] || return 0
  printf '\n%s\n\n| %s |\n%s\n' "$1" "$3" "$(awk -F'|' '{ s = "|"; for (i = 1; i <= NF; i++) s = s "---|"; print s }' <<<"$3")"
  # awk, not head: it reads to the end, so sort never dies of a closed pipe (pipefail).
  sort -t$'\t' -k1,1gr "$2" | awk -F'\t' -v n="$4" 'NR <= n { printf "| %s |", $1; for (i = 2; i <= NF; i++) printf " %s |", $i; print "" }'
}
table "Steps of make test (s)" "$dir/steps.tsv" "s | step" 50
table "Test binaries (s, wall time of the whole binary)" "$dir/binaries.tsv" "s | lane | binary" 100
table "The 20 slowest tests (s)" "$dir/tests.tsv" "s | lane | test" 20
