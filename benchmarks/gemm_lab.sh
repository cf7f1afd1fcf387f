#!/usr/bin/env bash
# Builds benchmarks/gemm_lab.cu into OUT_DIR/gemm_lab for sm_90a: the main part and one part per
# variant compile in parallel (MAX_JOBS jobs, default: the cores), then link with cuBLAS.
#   CUDA_HOME=... [PYTHON=.venv/bin/python] bash benchmarks/gemm_lab.sh OUT_DIR
# PYTHON must import torch (its headers) and cutlass_library (the nvidia-cutlass wheel's headers).
# Run it where libcublas.so.13 loads (the CUDA 13 toolkit's lib64, or torch's nvidia/cu13/lib).
set -euo pipefail
out=${1:?usage: bash benchmarks/gemm_lab.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
nvcc=${CUDA_HOME:?set CUDA_HOME to the CUDA toolkit}/bin/nvcc
parts=16  # benchmarks/gemm_lab.cu's variants, one a part
cutlass=$($py -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))')
target=$($py -c 'import re; print(re.search(r"TORCH_TARGET_VERSION = \"?(0x[0-9a-f]+)", open("'"$root"'/setup.py").read()).group(1))')
# cuBLAS: the toolkit's, else the one the CUDA torch wheel installed (nvidia/cu*/).
blas=$($py -c 'import glob, os, sys; h = glob.glob(os.path.join(sys.argv[1], "include", "cublas_v2.h")) + glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "nvidia", "cu*", "include", "cublas_v2.h")); print(os.path.dirname(os.path.dirname(h[0])) if h else "")' "$CUDA_HOME")
[ -n "$blas" ] || { echo "gemm_lab.sh: no cublas_v2.h in $CUDA_HOME or the Python's nvidia wheels" >&2; exit 1; }
mkdir -p "$out"
flags="-O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a -std=c++20 --expt-relaxed-constexpr --expt-extended-lambda
  --use_fast_math -Xptxas=-O3 -DKERNELSWAP_WITH_CUTLASS=1 -DKERNELSWAP_ARCHS=\"9.0a\" -DTORCH_TARGET_VERSION=$target -DUSE_CUDA
  -I$root/csrc -I$root/benchmarks -I$cutlass -I$blas/include $($py -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')"
export nvcc flags out root parts
seq -1 $((parts - 1)) | xargs -P "${MAX_JOBS:-$(nproc)}" -I{} sh -c \
  '$nvcc $flags -DGEMM_LAB_PARTS=$parts -DGEMM_LAB_PART={} -c $root/benchmarks/gemm_lab.cu -o $out/gemm_lab_part{}.o'
$nvcc -gencode=arch=compute_90a,code=sm_90a -o "$out/gemm_lab" "$out"/gemm_lab_part*.o -L"$blas/lib" -l:libcublas.so.13
rm -f "$out"/gemm_lab_part*.o
echo "built $out/gemm_lab"
