// The sm_80+ (mma.sp) 2:4 sparse GEMMs of kernelswap._C; see csrc/sm80/gemm_sm80.cuh for
// the layouts they read and csrc/gemm_args.h for the problem.
#pragma once

#include "gemm_args.h"

namespace kernelswap::sm80 {

// D (N, M) row-major = epilogue(w @ x.T): float inputs: acc + bias[n]; int8:
// (acc * x_scale[m]) * w_scale[n] + bias[n], each step rounded in fp32 (bit-exact with the
// reference). Explicitly instantiated in csrc/sm80/inst_*.cu; throws on a CUTLASS error.
template <DType In, DType Out, Tiles T>
void run_sparse_gemm(const GemmProblem& p);

}  // namespace kernelswap::sm80
