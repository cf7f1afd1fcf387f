#!/usr/bin/env bash
# tools/clean_venv_test.sh WHEEL: installs a built kernelswap wheel apart from the source tree,
# as a user would, and runs `python -m kernelswap info` and a CPU swap + save + load
# (tools/installed_smoke.py) from a folder outside the checkout. Two installs:
#   1. a fresh venv (build/clean-venv) with the wheel installed from the file with its declared
#      dependencies only. torch there is the CPU build torch==2.13.0 (inside the declared
#      2.11-2.14 range; the CUDA build would bring ~5 GB of CUDA libraries into every CI run),
#      so the wheel's CUDA 13 _C must be refused with a warning, never crash, while everything
#      else works;
#   2. the wheel with --no-deps (as on the GPU machine, which has no network) into a folder of
#      its own, under PYTHON's torch (default python3; a CUDA 13 build in CI), where its _C must
#      load (no GPU is needed to load it).
# tools/check_wheel.sh is the GPU-side test of the same wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(realpath "${1:?usage: tools/clean_venv_test.sh WHEEL}")
python=$(command -v "${PYTHON:-python3}")
case $python in /*) ;; */*) python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python") ;; esac  # used from another folder
say() { echo "clean_venv_test: $*"; }
smoke=$PWD/tools/installed_smoke.py
venv=$PWD/build/clean-venv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --no-compile torch==2.13.0 "$wheel"
say "fresh venv with $(basename "$wheel") and its dependencies: $(( $(date +%s) - start )) s"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
(cd "$work" && "$venv/bin/python" -m kernelswap info && "$venv/bin/python" "$smoke" "$site" refused)

"$python" -m pip install -q --no-deps --no-index --target "$work/site" "$wheel"
(cd "$work" && PYTHONPATH="$work/site" "$python" -m kernelswap info \
   && PYTHONPATH="$work/site" "$python" "$smoke" "$work/site" cuda)
say "$(basename "$wheel"): both installs pass ($(( $(date +%s) - start )) s)"
