#!/usr/bin/env bash
# compute-sanitizer over every GPU kernel (benchmarks/sanitize.py): memcheck, then racecheck.
# Exit status: nonzero when either tool reports an error or a kernel call fails.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
rc=0
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all "$py" benchmarks/sanitize.py || rc=1
done
exit $rc
