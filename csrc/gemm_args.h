// What kernelswap's CUTLASS GEMMs take (csrc/sm90: sm_90a, csrc/sm80: sm_80+ mma.sp),
// without any CUTLASS include, so the op entry points compile in seconds and each
// family of template instantiations (csrc/sm*/inst_*.cu, generated) compiles in its own process.
//
// Every GEMM here runs "swapped": the weight is CUTLASS's A operand and the tokens are
// its B operand, because the sparse tensor cores only take a sparse A. So
//   GEMM M = N (out features), GEMM N = M (tokens), K = in features, and
//   D (N, M) column-major is exactly out (M, N) row-major.
// Decode (M <= 64 tokens) then lands in the GEMM's N tile, which may be small, while the
// long weight dimension fills the 64/128-row tiles the tensor cores want.
#pragma once

#include "common.h"

#include <cstdint>
#include <memory>
#include <mutex>

namespace kernelswap {

// kI8 and kE4M3 (float8_e4m3fn) are the 8-bit inputs with the scaled epilogue; kU4 (4-bit codes,
// two a byte, even k in the low nibble) is a weight of the mixed-input GEMM only.
enum class DType { kBF16, kFP16, kI8, kE4M3, kU4 };
// kSmall: tiles for M <= kSmallM tokens, where the weight read dominates and big tiles
// would leave SMs idle; kLarge: the big tiles (each arch's header says which);
// kLargeFastAccum: dense e4m3 on sm_90a only, kLarge's place with FP8 fast accumulation
// (GemmProblem::fast_accum).
enum class Tiles { kSmall, kLarge, kLargeFastAccum };
constexpr int64_t kSmallM = 64;

// Where a launch's scratch memory comes from: alloc(ctx, bytes) returns at least `bytes` bytes on the
// problem's device, valid until its stream has run the launch (null: none, an error unless bytes is 0).
// The op entry points take it from torch's allocator (TorchWorkspace, csrc/op_checks.h); the raw entry
// points from the buffer their caller allocated (csrc/raw_entry.h).
struct Workspace {
  void* (*alloc)(void* ctx, size_t bytes);
  void* ctx;
};

// A raw plan's CUTLASS kernel parameters, kept between its runs (sm90 only): a run whose operands
// other than out sit where the kept parameters point (the plan's weights, its scratch) patches out's
// address (and x's, when x is the caller's) into them and launches, instead of setting CUTLASS up
// again (can_implement, workspace, the TMA descriptors, the kernel attributes: most of a GEMM's host
// time at decode sizes). run_gemm (csrc/sm90/gemm_sm90.cuh) fills and reads it.
struct GemmCache {
  std::mutex lock;
  std::shared_ptr<void> params;    // the kernel's Params, or null
  const void* made_for[2] = {};    // x (when it is the plan's scratch), x_scale
};

struct GemmProblem {
  const void* w;        // (N, K) int8 / e4m3 / 4-bit weight, or the 2:4 values in the arch's compressed layout
  const void* meta;     // sparse only: 2:4 metadata in the arch's layout
  const void* x;        // (M, K) activations, row-major, same element type as w (mixed-input: bf16 / fp16)
  const float* x_scale; // (M,) per-token scale, 8-bit inputs only
  const float* w_scale; // (N,) per-channel scale, 8-bit weights only
  const float* bias;    // (N,) fp32, or null
  void* out;            // the output: (M, N) row-major (sm90); (N, M) row-major (sm80, see gemm_sm80.cuh)
  int M, N, K;
  int device;           // the GPU it runs on (current while it launches)
  cudaStream_t stream;  // the stream it launches on
  Workspace workspace;
  size_t* query = nullptr;  // set: store the workspace bytes the launch needs there and launch nothing
  GemmCache* cache = nullptr;  // a raw plan's (sm90): reuse the kernel parameters of its last run
  // The mixed-input W4A16 GEMM (csrc/sm90/gemm_mixed_sm90.cuh): (K / group_size, N) fp32 scale and zero.
  const void* group_scale = nullptr;
  const void* group_zero = nullptr;
  int group_size = 0;
  // Dense e4m3 at M > kSmallM: accumulate all of K in the tensor cores, without the promotion into
  // fp32 registers every 128 K (csrc/sm90/gemm_sm90.cuh, Tiles::kLargeFastAccum).
  bool fast_accum = false;
};

}  // namespace kernelswap
