#!/usr/bin/env bash
# tools/build_wheel.sh [cu13] [cu12]: builds the release wheels of kernelswap into dist/, one per
# CUDA target named (default: cu13), each repaired and checked by tools/repair_wheel.sh:
#   dist/kernelswap-<version>+cu<N>-cp310-abi3-manylinux_<glibc>_x86_64.whl
# carrying sm_80, sm_89 and sm_90a machine code plus sm_90a PTX. KERNELSWAP_WHEEL_ARCHS overrides
# the archs (not TORCH_CUDA_ARCH_LIST: GPU images often preset that to their own card, and a
# wheel built from it would silently carry one arch).
#
# Target cuN is built with:
#   KERNELSWAP_CUDA<N>_HOME    a CUDA N toolkit (nvcc, headers, libcudart). Default for 13:
#                              /usr/local/cuda-13.0. No default for 12: the package index's
#                              nvidia-cuda-nvcc-cu12 wheels hold ptxas and libnvvm but no nvcc.
#   KERNELSWAP_CUDA<N>_PYTHON  an interpreter whose torch is a CUDA N build, with setuptools,
#                              wheel, ninja and nvidia-cutlass. Default for 13: $PYTHON or python3.
#                              It must be a CUDA N torch: torch's cpp_extension refuses an nvcc of
#                              another major, and _C links torch's libtorch_cuda.so, which a CPU
#                              torch does not have.
# Both are checked before anything is compiled.
#
# KERNELSWAP_WHEEL_SOURCE: what to build from, the checkout (default) or an sdist from
# tools/build_sdist.sh (the release way: it proves the tarball builds). From the checkout the
# objects are kept in build/ (ninja recompiles only what changed, and reuses tools/bootstrap.sh's
# objects when the archs and toolkit are the same).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "build_wheel: $*"; }
fail() { echo "build_wheel: $*" >&2; exit 1; }
archs=${KERNELSWAP_WHEEL_ARCHS:-"8.0;8.9;9.0a+PTX"}
source=${KERNELSWAP_WHEEL_SOURCE:-.}
[ -e "$source" ] || fail "KERNELSWAP_WHEEL_SOURCE=$source does not exist"
[ $# -gt 0 ] || set -- cu13

for target in "$@"; do
  case $target in
    cu12) major=12; home=${KERNELSWAP_CUDA12_HOME:-}; python=${KERNELSWAP_CUDA12_PYTHON:-} ;;
    cu13) major=13; home=${KERNELSWAP_CUDA13_HOME:-/usr/local/cuda-13.0}; python=${KERNELSWAP_CUDA13_PYTHON:-${PYTHON:-python3}} ;;
    *) fail "unknown target '$target': use cu12 or cu13" ;;
  esac
  [ -n "$home" ] || fail "$target: set KERNELSWAP_CUDA${major}_HOME to a CUDA $major toolkit folder (bin/nvcc," \
                         "include/, lib64/); pip's nvidia-cuda-nvcc-cu12 has no nvcc, so it cannot be one"
  [ -n "$python" ] || fail "$target: set KERNELSWAP_CUDA${major}_PYTHON to a Python whose torch is a CUDA $major build"
  case $python in */*) python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python") ;; esac  # kept a venv's path
  [ -x "$home/bin/nvcc" ] || fail "$target: $home/bin/nvcc not found (KERNELSWAP_CUDA${major}_HOME)"
  nvcc_version=$("$home/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  [ "${nvcc_version%%.*}" = "$major" ] || fail "$target: $home/bin/nvcc is CUDA $nvcc_version, not $major.x"
  torch_cuda=$("$python" -c "import torch; print(torch.version.cuda)") \
    || fail "$target: $python cannot import torch (KERNELSWAP_CUDA${major}_PYTHON)"
  [ "${torch_cuda%%.*}" = "$major" ] || fail "$target: the torch of $python is built for CUDA $torch_cuda," \
                                            "not $major.x (KERNELSWAP_CUDA${major}_PYTHON)"

  say "$target: nvcc $nvcc_version ($home), torch CUDA $torch_cuda ($python), archs $archs, from $source"
  start=$(date +%s)
  raw=build/wheel-raw/$target
  # build/lib* holds the last build's _C.so: left there, setuptools would package it unbuilt.
  rm -rf "$raw" build/lib.* build/bdist.*
  CUDA_HOME=$home TORCH_CUDA_ARCH_LIST=$archs KERNELSWAP_BUILD_CUDA=on PATH="$(dirname "$python"):$PATH" \
    "$python" -m pip wheel --no-build-isolation --no-deps -w "$raw" "$source"
  say "$target: compiled and packaged in $(( $(date +%s) - start )) s"
  bash tools/repair_wheel.sh "$(ls "$raw"/kernelswap-*+"$target"-*.whl)" dist
done
