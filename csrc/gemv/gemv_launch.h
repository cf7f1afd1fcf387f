// What the decode GEMVs' two entries share: the torch ops (csrc/gemv/gemv_ops.cu) and the raw
// plans of csrc/raw_entry.h (csrc/gemv/gemv_raw.cu). The formats by number, one instantiation's
// launcher, a planned launch, and the functions that make them, defined in gemv_ops.cu, where the
// kernels are instantiated.
#pragma once

#include "gemv/gemv_kernel.cuh"

#include <cuda_runtime.h>

#include <cstdint>

namespace kernelswap {
namespace gemv {

constexpr int64_t kMaxM = 64;

// The formats by number, as the raw entry points take them: W4A16 (groups 32 / 64 / 128), W8A16, W8A8,
// 2:4 bf16 / fp16, 2:4 int8 (W8A8), then W8A16 and W8A8 on the int8 (N, K) weight as it lies.
enum Format { kInt4 = 0, kInt8Weight = 1, kInt8 = 2, kSparse24 = 3, kSparse24Int8 = 4, kInt8WeightRows = 5,
              kInt8Rows = 6 };
constexpr bool row_major(int format) { return format == kInt8WeightRows || format == kInt8Rows; }

// One (format, activation, NT) instantiation: its split plan and its launch. The op entry points
// and the raw plans pick one (pick) and share everything after that.
struct Launcher {
  Plan (*plan)(int64_t n_blocks, int64_t batches, int m, int sms);
  // pdl: launched with programmatic stream serialization (see gemv_kernel.cuh's pdl_wait), so it
  // may start while the kernel before it finishes.
  void (*run)(const Args& a, dim3 grid, int smem, bool pdl, cudaStream_t stream);
  int warps;
  bool pdl;  // the format's F::kPdl: launched with PDL by default (pdl_on)
};

// Everything a launch needs besides x, out and the workspace (the splits of K included).
struct Launch {
  Launcher l;
  Args a;  // x, out and ws are set per call
  dim3 grid;
  int smem = 0;
  int64_t ws_bytes = 0;  // (splits, M, N) 4-byte partials, or 0 with one split
  bool pdl = false;      // launched with PDL (pdl_on)
};

// The launcher of `format` (group_size for int4) at M = m rows, bf16 or fp16 activations.
Launcher pick(int format, int group_size, bool bf16, int64_t m);

// The splits of K, the grid, the shared memory and the workspace of one launch on `device`.
Launch plan_launch(const Launcher& l, const Args& a, int device);

// The Args every format fills the same way; x, out, ws and the format's scales / zeros are the
// caller's to set.
Args fill_args(const void* w, const float* bias, void* counters, int64_t M, int64_t K, int64_t N);

}  // namespace gemv
}  // namespace kernelswap
