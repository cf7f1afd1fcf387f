// The sm_90a CUTLASS GEMMs of kernelswap._C (see csrc/gemm_args.h for what they take and
// the swapped orientation, weight = A, tokens = B).
#pragma once

#include "gemm_args.h"

namespace kernelswap::sm90 {

using kernelswap::DType;
using kernelswap::GemmProblem;
using kernelswap::kSmallM;
using kernelswap::Tiles;

// sm90 Tiles: kSmall = 64x64 tiles, ping-pong warpgroups, no cluster; kLarge = 128x128
// tiles, cooperative warpgroups (sparse, e4m3) or ping-pong (int8), 2-CTA clusters;
// kLargeFastAccum = dense e4m3's kLarge with FP8 fast accumulation (ping-pong).
//
// out = epilogue(x @ w.T): float inputs: acc + bias; int8 / e4m3: (acc * x_scale[m]) * w_scale[n] + bias[n],
// each step rounded in fp32 (no FMA contraction), so the int8 path is bit-exact with the reference
// (e4m3 sums in fp32 in the tensor cores' order, so it matches the reference to fp32 rounding only).
// Explicitly instantiated in csrc/sm90/inst_*.cu; throws on a CUTLASS error.
template <bool Sparse, DType In, DType Out, Tiles T>
void run_gemm(const GemmProblem& p);

}  // namespace kernelswap::sm90
