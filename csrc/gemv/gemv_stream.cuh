// Where a warp's weight loads come from (each format's Stream, used by gemv_kernel.cuh): one
// batch is kLoads 16-byte loads a lane, issued together; next() moves to the next batch.
//
//   PreparedStream<kLoads>  a layout of python/kernelswap/ops/gemv_layout.py: batch b of tile
//                           `tile` is kLoads x 32 lanes x 16 bytes, contiguous, load u of lane l
//                           at 16 (32 u + l); every load reads 512 contiguous bytes a warp.
//   RowStream               the (N, K) int8 weight as the layer holds it (row-major, K % 16 ==
//                           0, 16-byte aligned rows): load u of batch b is lane (g, t)'s 16
//                           bytes of row 16 tile + g + 8 (u % 2) at K 256 b + 64 (u / 2) + 16 t,
//                           so one load reads 64 contiguous bytes of each of 8 rows (whole
//                           sectors); zero past K, and rows past N read row N - 1 (their outputs
//                           are never written).
#pragma once

#include "gemv/gemv_stage.cuh"

namespace kernelswap {
namespace gemv {

template <int L>
struct PreparedStream {
  static constexpr int kLoads = L;
  static constexpr int kStride = kLoads * 32;  // uint4 a batch of one tile
  const uint4* p;

  __device__ PreparedStream(const Args& a, int tile, int b0, int lane)
      : p(a.w + (static_cast<int64_t>(tile) * a.batches + b0) * kStride + lane) {}
  __device__ void load(uint64_t policy, uint4 (&w)[kLoads]) const {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) w[u] = ld_stream(p + u * 32, policy);
  }
  __device__ void next() { p += kStride; }
};

struct RowStream {
  static constexpr int kLoads = 8;
  const int8_t* row0;  // row 16 tile + g at this batch's K + 16 t
  const int8_t* row1;  // row 16 tile + g + 8, the same K
  int64_t k;           // K of this lane's first byte in the batch (256 b + 16 t)
  int64_t K;

  __device__ RowStream(const Args& a, int tile, int b0, int lane) : K(a.K) {
    const int g = lane / 4, t = lane % 4;
    const int n0 = min(tile * kTileN + g, a.N - 1), n1 = min(tile * kTileN + g + 8, a.N - 1);
    const auto* w = reinterpret_cast<const int8_t*>(a.w);
    k = static_cast<int64_t>(b0) * kBatchK + 16 * t;
    row0 = w + n0 * K + k;
    row1 = w + n1 * K + k;
  }
  __device__ void load(uint64_t policy, uint4 (&w)[kLoads]) const {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const bool in = k + 64 * c < K;  // K % 16 == 0: a load is all inside K or all past it
      w[2 * c] = in ? ld_stream(reinterpret_cast<const uint4*>(row0 + 64 * c), policy) : make_uint4(0, 0, 0, 0);
      w[2 * c + 1] = in ? ld_stream(reinterpret_cast<const uint4*>(row1 + 64 * c), policy) : make_uint4(0, 0, 0, 0);
    }
  }
  __device__ void next() {
    k += kBatchK;
    row0 += kBatchK;
    row1 += kBatchK;
  }
};

}  // namespace gemv
}  // namespace kernelswap
