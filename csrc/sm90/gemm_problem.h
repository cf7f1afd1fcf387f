// What the sm_90a CUTLASS GEMMs of kernelswap._C take, without any CUTLASS include, so
// the op entry points (csrc/sm90_gemm_ops.cu) compile in seconds and each template
// instantiation (csrc/sm90/inst_*.cu, generated) compiles in its own process.
//
// Every GEMM here runs "swapped": the weight is CUTLASS's A operand and the tokens are
// its B operand, because the Hopper sparse tensor cores only take a sparse A. So
//   GEMM M = N (out features), GEMM N = M (tokens), K = in features, and
//   D (N, M) column-major is exactly out (M, N) row-major.
// Decode (M <= 64 tokens) then lands in the GEMM's N tile, which may be small, while the
// long weight dimension fills the 64/128-row tiles the tensor cores want.
#pragma once

#include "common.h"

#include <cstdint>

namespace kernelswap::sm90 {

enum class DType { kBF16, kFP16, kI8 };
// kSmall: 64x64 tiles, ping-pong warpgroups, no cluster: for M <= kSmallM tokens, where
// the weight read dominates and big tiles would leave SMs idle. kLarge: 128x128 tiles,
// cooperative warpgroups (sparse) or ping-pong (dense), 2-CTA clusters.
enum class Tiles { kSmall, kLarge };
constexpr int64_t kSmallM = 64;

struct GemmProblem {
  const void* w;        // (N, K) int8 weight, or the 2:4 values in CUTLASS's compressed layout
  const void* meta;     // sparse only: 2:4 metadata in CUTLASS's layout (see sparse24_prepare.cu)
  const void* x;        // (M, K) activations, row-major, same element type as w
  const float* x_scale; // (M,) per-token scale, int8 only
  const float* w_scale; // (N,) per-channel scale, int8 only
  const float* bias;    // (N,) fp32, or null
  void* out;            // (M, N) row-major
  int M, N, K;
  const Tensor* like;   // a CUDA tensor on the right device, to allocate the workspace from
};

// out = epilogue(x @ w.T): float inputs: acc + bias; int8: (acc * x_scale[m]) * w_scale[n] + bias[n],
// each step rounded in fp32 (no FMA contraction), so the int8 path is bit-exact with the reference.
// Explicitly instantiated in csrc/sm90/inst_*.cu; throws on a CUTLASS error.
template <bool Sparse, DType In, DType Out, Tiles T>
void run_gemm(const GemmProblem& p);

}  // namespace kernelswap::sm90
