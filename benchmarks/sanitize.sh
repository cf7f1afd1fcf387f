#!/usr/bin/env bash
# compute-sanitizer over every GPU kernel (benchmarks/sanitize.py): memcheck, then racecheck.
# Exit status: nonzero when either tool reports an error or a kernel call fails.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
rc=0
# racecheck: each hazard in full too (`--racecheck-report all`: the threads and, for a
# write-write race, the value already there and the value written), the first 40.
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  extra=()
  [[ $tool == racecheck ]] && extra=(--racecheck-report all --print-limit 40)
  compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 1 --target-processes all "$py" benchmarks/sanitize.py \
    || rc=1
done
exit $rc
