#!/usr/bin/env bash
# Builds the kernelswap wheel for the CUDA targets into dist/:
#   kernelswap-<version>+cu<CUDA major>-cp310-abi3-<platform>.whl
# carrying sm_80, sm_89 and sm_90a machine code plus sm_90a PTX. Needs torch (CUDA
# build), a CUDA toolkit (CUDA_HOME, default /usr/local/cuda) and, for the CUTLASS
# kernels, the nvidia-cutlass wheel installed. Override the archs with
# KERNELSWAP_WHEEL_ARCHS (not TORCH_CUDA_ARCH_LIST: GPU images often preset that to their
# own card, and a wheel built from it would silently carry one arch).
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${KERNELSWAP_WHEEL_ARCHS:-"8.0;8.9;9.0a+PTX"}
export KERNELSWAP_BUILD_CUDA=on
python=${PYTHON:-python3}
start=$(date +%s)
"$python" -m pip wheel --no-build-isolation --no-deps -w dist .
echo "build_wheel: archs ${TORCH_CUDA_ARCH_LIST}, $(( $(date +%s) - start )) s"
ls -l dist/kernelswap-*.whl
