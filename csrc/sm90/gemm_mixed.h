// The sm_90a mixed-input GEMMs of kernelswap._C (csrc/sm90/gemm_mixed_sm90.cuh): a 16-bit x times an
// int8 (W = kI8, per-channel w_scale) or 4-bit (W = kU4, group_scale / group_zero) weight, out in x's
// type (Out). Explicitly instantiated in csrc/sm90/inst_mixed_*.cu; throws on a CUTLASS error.
#pragma once

#include "sm90/gemm_problem.h"

namespace kernelswap::sm90 {

template <DType W, DType Out>
void run_mixed_gemm(const GemmProblem& p);

}  // namespace kernelswap::sm90
