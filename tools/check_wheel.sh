#!/usr/bin/env bash
# Proves a built wheel on a GPU machine: installs WHEEL (default: the newest repaired
# dist/kernelswap-*+cu<N>-*manylinux*.whl, N the CUDA major of the running torch) into a fresh
# folder (pip --target; torch comes from the running interpreter), then runs the test
# suite from a copy of tests/ (and benchmarks/, whose plot script a test runs) outside
# the source tree, so the installed package is what is tested. The tests of the source tree
# itself (test_source_tree.py, test_wheel_meta.py, test_bootstrap.py: csrc/, the build scripts,
# the README) need the checkout and are left to the checkout's test run. SITE names the install
# folder (default: a new temporary one); arguments go to pytest (e.g. -n 8 with xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
major=$("$python" -c "import torch; print((torch.version.cuda or 'none').split('.')[0])")
wheel=${WHEEL:-$(ls -t dist/kernelswap-*+cu"$major"-*manylinux*.whl 2>/dev/null | head -1 || true)}
[ -n "$wheel" ] || { echo "check_wheel: no dist/kernelswap-*+cu$major-*manylinux*.whl for this torch (CUDA $major);" \
                          "build it with tools/build_wheel.sh or set WHEEL" >&2; exit 1; }
echo "check_wheel: $wheel"
site=${SITE:-$(mktemp -d)}
"$python" -m pip install -q --no-deps --no-index --target "$site" "$wheel"
work=$(mktemp -d)
cp -r tests benchmarks pyproject.toml "$work/"
cd "$work"
export PYTHONPATH="$site"
"$python" -c "import kernelswap, sys; p = kernelswap.__file__; assert p.startswith(sys.argv[1]), p" "$site"
"$python" -m kernelswap info
"$python" -m pytest -q --benchmark-disable --ignore=tests/test_source_tree.py --ignore=tests/test_wheel_meta.py \
  --ignore=tests/test_bootstrap.py "$@" tests
