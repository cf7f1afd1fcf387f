#!/usr/bin/env bash
# tools/build_sdist.sh [--install]: builds dist/kernelswap-<version>.tar.gz (`python -m build
# --sdist`) and checks that it holds every tracked file the build needs (csrc/, kernels/,
# python/, setup.py, pyproject.toml, MANIFEST.in, README.md).
#   --install  also builds and installs it from the tarball alone, the way a user with their own
#              toolkit does (`pip install --no-build-isolation kernelswap-*.tar.gz` against the
#              installed torch), into build/sdist-check/site, with the CUDA extension required
#              (KERNELSWAP_BUILD_CUDA=on; TORCH_CUDA_ARCH_LIST, default 9.0a here, picks the
#              archs), and imports it from outside the source tree. That is a full compile.
# PYTHON (default python3) is the interpreter whose torch, setuptools, ninja and nvidia-cutlass
# the --install build uses; `build` itself runs from build/wheel-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "build_sdist: $*"; }
python=${PYTHON:-python3}
tools=build/wheel-tools
"$tools/bin/python" -c "import build" 2>/dev/null || {
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q build==1.6.1
}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' python/kernelswap/_version.py)
sdist=dist/kernelswap-$version.tar.gz
rm -f "$sdist"
# The sdist's file list does not depend on the extension; building it needs no torch or toolkit.
mkdir -p build
KERNELSWAP_BUILD_CUDA=off "$tools/bin/python" -m build --sdist -o dist . > build/sdist.log 2>&1 \
  || { cat build/sdist.log >&2; exit 1; }
missing=$(comm -23 <(git ls-files csrc kernels python setup.py pyproject.toml MANIFEST.in README.md | sort) \
                   <(tar tzf "$sdist" | sed 's|^[^/]*/||' | sort))
if [ -n "$missing" ]; then
  say "FAIL: $sdist lacks tracked files the build needs (add them to MANIFEST.in):"
  echo "$missing" >&2
  exit 1
fi
say "$sdist: $(tar tzf "$sdist" | grep -c -v '/$') files, every tracked build file in it"

[ "${1:-}" = --install ] || exit 0
check=build/sdist-check
rm -rf "$check"
mkdir -p "$check"
start=$(date +%s)
KERNELSWAP_BUILD_CUDA=on TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} PATH="$(dirname "$python"):$PATH" \
  "$python" -m pip install -q --no-build-isolation --no-deps --target "$check/site" "$sdist"
say "built and installed from $sdist in $(( $(date +%s) - start )) s"
cd "$check"
PYTHONPATH=site "$python" -c "
import kernelswap, sys
from kernelswap import _ext
assert kernelswap.__file__.startswith(sys.argv[1]), kernelswap.__file__
assert _ext.load(), _ext.status()
print('build_sdist: installed from the sdist:', kernelswap.__file__, _ext.build_info())
" "$PWD/site"
