// What the decode GEMV formats (gemv_formats.cuh, gemv_formats_int8.cuh) share: the kernel's
// arguments, x staged in shared memory for the 16-bit formats, and their k16 step loop.
#pragma once

#include "gemv/gemv_mma.cuh"

namespace kernelswap {
namespace gemv {

struct Args {
  const void* x;          // (M, K) activations, Act::T
  const uint4* w;         // prepared weight: (n_tiles, batches, kLoads, 32 lanes) x 16 bytes
  const void* scales;     // Int4: (n_tiles, groups, 8, 2) fp16; Int8*: (N,) fp32
  const void* zeros;      // Int4: (n_tiles, groups, 8, 2) uint8, or null (symmetric: 8)
  const float* bias;      // (N,) fp32 or null
  void* out;              // (M, N) Act::T
  void* ws;               // (splits, M, N) Acc partials when splits > 1
  int* counters;          // (>= gridDim.x,) int32, zero between launches
  int64_t K;              // true K of x (<= batches * kBatchK)
  int M, N, n_tiles, batches, batches_per_split;
};

// x staged in shared memory for the float formats (W4A16, W8A16): the block's K range of the
// M real rows, then one zero row that lanes past M read, so the steps need no bounds checks.
// Within each 16-value chunk of K the values are stored in B-fragment order (lane t's pairs
// (2t, 2t+1) and (2t+8, 2t+9) adjacent), so a step's B fragment is one 8-byte shared load
// per lane. Rows are padded by kPad = 32 bytes: the 8 rows a warp reads fall in two bank sets,
// the minimum for 256 bytes (the W8A16 row format's 16-byte reads want 16: gemv_formats_rows.cuh).
//
// kNatural keeps each chunk in K order instead, so lane t's 8 bytes of a step are values
// 4t .. 4t + 3: the 2:4 format maps a lane's B-fragment rows (2t, 2t + 1, 2t + 8, 2t + 9) to
// those four values, the one group of four its A fragment holds (the product does not change
// when A and B permute K alike).
template <bool kNatural = false, int kPad = 32>
struct XStage {
  static_assert(kPad % 16 == 0, "rows stay 16-byte aligned");
  static constexpr int row_bytes(int k_range) { return 2 * k_range + kPad; }
  static constexpr int bytes(int k_range, int m, int /*mp*/) { return (m + 1) * row_bytes(k_range); }

  const unsigned char* base;  // row 0 of the block's K range
  int row_bytes_;

  // Fills the stage (all threads of the block; ends with a barrier).
  template <class Act>
  __device__ void fill(const Args& a, int b0, int b1, unsigned char* smem) {
    const int k_range = (b1 - b0) * kBatchK, rb = row_bytes(k_range);
    const int64_t k_begin = static_cast<int64_t>(b0) * kBatchK;
    const int vecs = k_range / 8;  // 16-byte vectors a row
    const auto* x = static_cast<const typename Act::T*>(a.x);
    for (int i = threadIdx.x; i < (a.M + 1) * vecs; i += blockDim.x) {
      const int m = i / vecs, v = i % vecs;
      const int64_t k = k_begin + 8 * v;
      uint4 r = make_uint4(0u, 0u, 0u, 0u);
      if (m < a.M && k < a.K) r = __ldg(reinterpret_cast<const uint4*>(x + m * a.K + k));
      if constexpr (kNatural) {
        *reinterpret_cast<uint4*>(smem + m * rb + 16 * v) = r;
      } else {
        // values 8v .. 8v + 7 = half h of chunk v / 2: pair j goes to word 2j + h of the chunk
        auto* chunk = reinterpret_cast<uint32_t*>(smem + m * rb + 32 * (v / 2)) + (v % 2);
        chunk[0] = r.x;
        chunk[2] = r.y;
        chunk[4] = r.z;
        chunk[6] = r.w;
      }
    }
    base = smem;
    row_bytes_ = rb;
    __syncthreads();
  }

  // The lane's row of the stage for fragment nt (the zero row past M).
  __device__ const unsigned char* row(const Args& a, int nt, int g) const {
    const int m = nt * 8 + g;
    return base + (m < a.M ? m : a.M) * row_bytes_;
  }

  // Each fragment's row at batch b of the split (16 k16 steps of 32 bytes a batch).
  template <int NT>
  __device__ void batch_rows(const Args& a, int b, int g, const unsigned char* (&rows)[NT]) const {
    const int b_local = b - blockIdx.y * a.batches_per_split;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) rows[nt] = row(a, nt, g) + 32 * 16 * b_local;
  }
};

// B fragment of k16 step `step` (block-local) from a lane's staged row.
__device__ __forceinline__ uint2 x_frag(const unsigned char* row, int step, int t) {
  return *reinterpret_cast<const uint2*>(row + 32 * step + 8 * t);
}

// The 16 k16 steps of batch b for a 16-bit format whose A fragment of a step comes from the step
// alone: a_regs(s, ra) makes step s's, the B fragments come from the block's staged x.
template <class Act, int NT, class Block, class ARegs>
__device__ __forceinline__ void mma_steps16(const Args& a, const Block& blk, int b, int g, int t,
                                            float (&acc)[NT][4], ARegs&& a_regs) {
  const unsigned char* rows[NT];
  blk.template batch_rows<NT>(a, b, g, rows);
#pragma unroll
  for (int s = 0; s < 16; ++s) {
    uint32_t ra[4];
    a_regs(s, ra);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const uint2 xb = x_frag(rows[nt], s, t);
      Act::mma(acc[nt], ra, xb.x, xb.y);
    }
  }
}

}  // namespace gemv
}  // namespace kernelswap
