// The sm_90a mixed-input GEMMs of kernelswap._C (csrc/sm90/gemm_mixed_sm90.cuh): a bf16 x times an
// int8 (W = kI8, per-channel w_scale) or 4-bit (W = kU4, group_scale / group_zero) weight, out in x's
// type (Out; bf16 alone is instantiated, to keep the build short: fp16 layers take the Triton GEMMs),
// 128 (T = kSmall) or 256 (kLarge) tokens a tile. Explicitly instantiated in csrc/sm90/inst_mixed_*.cu;
// throws on a CUTLASS error.
#pragma once

#include "sm90/gemm_problem.h"

namespace kernelswap::sm90 {

// From this many tokens the 256-token tile serves (measured better at M = 512, worse at 128).
constexpr int kMixedLargeFromM = 512;

template <DType W, DType Out, Tiles T>
void run_mixed_gemm(const GemmProblem& p);

}  // namespace kernelswap::sm90
