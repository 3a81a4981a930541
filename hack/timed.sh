#!/usr/bin/env bash
# Run a step of `make test` and record how long it took: hack/timed.sh <label> <command...>
# (a line "seconds<TAB>label" in $TEST_TIMES_DIR/steps.tsv; hack/test-times.sh prints them).
set -uo pipefail
label=$1
shift
started=$(date +%s)
"$@"
status=$?
dir=${TEST_TIMES_DIR:-target/test-times}
mkdir -p "$dir"
printf '%s\t%s\n' "$(($(date +%s) - started))" "$label" >>"$dir/steps.tsv"
exit "$status"
