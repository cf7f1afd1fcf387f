#!/usr/bin/env bash
# The one script for a GPU session (an H100 or H200, no network, a 10-minute slot):
#   install carried wheels, build + install kernelswap with its CUDA extension, print
#   `python -m kernelswap info`, run the test suite, a compute-sanitizer pass (if a
#   script for it exists), then the benchmarks under a time budget.
# Everything lands in $OUT as at most 8 flat files:
#   build.log info.txt tests.log sanitizer.log bench.log bench.csv bench.md summary.txt
# and the last thing printed is the targets table.
#
# Usage (repository root):  KERNELSWAP_COMMIT=<sha> bash benchmarks/gpu_all.sh
# Knobs (environment):      GPU_ALL_SECONDS  total wall budget (default 480: fits a 600 s slot)
#                           BENCH_ARGS       extra arguments for `python -m kernelswap bench`; they come
#                                            last, so they win: e.g. "--shapes llm --models none" for a
#                                            second session on what the first one's budget cut
#                           PREBUILT_EXT     1: a carried python/kernelswap/_C.so is used, not rebuilt
#                           PYTHON           interpreter (default python3)
#                           SANITIZE         0: skip the compute-sanitizer step
#                           TESTS            what pytest runs (default: tests), e.g. "tests/test_bench.py"
#                           TESTS_SECS       the tests step's timeout (default: 35% of the time left)
#                           GPU_BENCH        a shell command run instead of the default bench step (e.g.
#                                            "python3 benchmarks/overhead_quick.py --csv \$OUT/host.csv"),
#                                            its output in bench.log
set -uo pipefail  # no -e: every step runs and reports, whatever the one before did

export PYTHONUNBUFFERED=1  # logs stay complete up to the moment a timeout stops a step
START=$(date +%s)
TOTAL=${GPU_ALL_SECONDS:-480}
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu_out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

left() { echo $(( TOTAL - ($(date +%s) - START) )); }
note() { echo "[gpu_all +$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }
# step NAME LOG SECONDS CMD...: run CMD with a timeout, log it, record its exit status.
step() {
  local name=$1 log=$2 secs=$3; shift 3
  if (( secs < 5 )); then note "$name: skipped (time budget spent)"; return 99; fi
  note "$name: start (timeout ${secs}s)"
  timeout --signal=TERM --kill-after=15 "$secs" "$@" >> "$log" 2>&1
  local rc=$?
  note "$name: exit $rc$( ((rc == 124)) && echo ' (timed out)')"
  return $rc
}

# ---- 1. carried wheels (e.g. nvidia-cutlass for the CUTLASS headers), no network
if compgen -G ".carry/*.whl" > /dev/null; then
  step "carried wheels" "$OUT/build.log" 60 $PY -m pip install --no-deps --no-index .carry/*.whl
fi

# ---- 2. build and install; fall back to the pure-Python package if the CUDA build fails
BUILD_SECS=$(( $(left) * 45 / 100 ))
if [[ ${PREBUILT_EXT:-0} == 1 && -f python/kernelswap/_C.so ]]; then
  # An extension built on another machine and carried (run's `carry`): install without building.
  KERNELSWAP_BUILD_CUDA=off step "install (carried python/kernelswap/_C.so)" "$OUT/build.log" 120 \
    $PY -m pip install --no-build-isolation --no-deps -e .
elif ! CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 \
     step "build (CUDA extension)" "$OUT/build.log" "$BUILD_SECS" \
     $PY -m pip install --no-build-isolation --no-deps -e .; then
  note "CUDA build failed or timed out (tail of build.log below); installing without the extension"
  tail -n 30 "$OUT/build.log"
  KERNELSWAP_BUILD_CUDA=off step "build (no extension)" "$OUT/build.log" 120 \
    $PY -m pip install --no-build-isolation --no-deps -e .
fi

# python3, not a bare python/pip: on the GPU machine those belong to another interpreter.
$PY -c "import kernelswap" 2>> "$OUT/build.log" || note "kernelswap does not import with $PY (see build.log)"

# ---- 3. what got built and which backend serves each op
step "info" "$OUT/info.txt" 60 $PY -m kernelswap info
cat "$OUT/info.txt"

# ---- 4. the test suite (GPU tests run here; CPU tests too)
# pytest-benchmark may be missing there; the CPU-path benchmarks then run once as plain tests.
BENCH_FLAG=$($PY -c "import pytest_benchmark" 2>/dev/null && echo --benchmark-disable)
# shellcheck disable=SC2086
step "tests" "$OUT/tests.log" ${TESTS_SECS:-$(( $(left) * 35 / 100 ))} $PY -m pytest -q -rfE -p no:cacheprovider $BENCH_FLAG \
  ${TESTS:-tests}
tail -n 5 "$OUT/tests.log" | tee -a "$SUMMARY"

# ---- 5. compute-sanitizer, if a script for it exists
# Any tests/ or benchmarks/ script named *sanitiz*.sh / *.py (a test_*.py already ran with the suite).
SANITIZER=""
for f in tests/*sanitiz*.sh benchmarks/*sanitiz*.sh tests/*sanitiz*.py benchmarks/*sanitiz*.py; do
  [[ -f $f && $(basename "$f") != test_* ]] && { SANITIZER=$f; break; }
done
if [[ -n $SANITIZER && ${SANITIZE:-1} != 0 ]]; then
  SAN_SECS=$(( $(left) / 4 < 90 ? $(left) / 4 : 90 ))
  case $SANITIZER in
    *.sh) step "compute-sanitizer ($SANITIZER)" "$OUT/sanitizer.log" "$SAN_SECS" bash "$SANITIZER" ;;
    *.py) step "compute-sanitizer ($SANITIZER)" "$OUT/sanitizer.log" "$SAN_SECS" $PY "$SANITIZER" ;;
  esac
  tail -n 5 "$OUT/sanitizer.log" | tee -a "$SUMMARY"
else
  note "compute-sanitizer: no script (tests/*sanitiz*.sh|.py, benchmarks/*sanitiz*.sh|.py) in this tree"
fi

# ---- 6. benchmarks: the harness stops starting cases when its budget is spent and still
#         writes every case (as skipped); the timeout is only the backstop.
BENCH_SECS=$(( $(left) - 20 ))
if [[ -n ${GPU_BENCH:-} ]]; then
  step "bench (GPU_BENCH)" "$OUT/bench.log" "$BENCH_SECS" bash -c "$GPU_BENCH"
  note "done; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
  tail -n 60 "$OUT/bench.log"
  exit 0
fi
# shellcheck disable=SC2086
step "bench" "$OUT/bench.log" "$BENCH_SECS" \
  $PY -m kernelswap bench --shapes targets,llm,resnet50,mobilenetv2 --budget-s $(( BENCH_SECS - 45 )) --out "$OUT" ${BENCH_ARGS:-}

note "done; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
sed -n '/^wrote /,$p' "$OUT/bench.log"
