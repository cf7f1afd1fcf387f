// The decode GEMV formats with int8 activations (listed in gemv_formats.cuh): x quantized per
// token inside the kernel into shared memory, int32-exact accumulation.
#pragma once

#include "gemv/gemv_stream.cuh"

namespace kernelswap {
namespace gemv {

// One value of quantize_per_token_ref: round_half_even(x / s) clamped to [-127, 127];
// 0 for an all-zero row (s == 0) and where the quotient is NaN (nan_to_num).
__device__ __forceinline__ int quantize_one(float x, float s) {
  if (s == 0.f) return 0;
  const float v = rintf(__fdiv_rn(x, s));
  if (v != v) return 0;
  return static_cast<int>(fminf(fmaxf(v, -127.f), 127.f));
}

// kPad: bytes past each quantized row of x in shared memory (16: the 4-byte B reads of the
// prepared layout are conflict-free; the row formats' 16-byte reads need 64).
template <class Act, int kPad = 16>
struct Int8W8 {
  static constexpr int kWarps = 8, kBlocksPerSm = 2;  // as Int8W16 (see FloatBase)
  static constexpr bool kPdl = false;                  // see FloatBase
  using T = typename Act::T;
  using Acc = int;
  static constexpr int kLoads = 8;
  using Stream = PreparedStream<kLoads>;
  static constexpr int kScaleBytes = 64 * 4;  // a_scale of up to 64 tokens, ahead of q
  struct Aux {};
  struct Block {
    const int8_t* q;     // (mp, stride) the block's K range of x, quantized
    const float* scale;  // (M,) per-token scales
    int stride;
  };
  static constexpr int row_stride(int k_range) { return k_range + kPad; }
  static constexpr int smem_bytes(int k_range, int, int mp) { return kScaleBytes + mp * row_stride(k_range); }

  // Per-token amax over all of K, then this block's K range of x quantized into shared memory
  // (zero past M and K). The amax pass walks all M rows as one flat range of 16-byte vectors,
  // so every thread has independent loads in flight at any M; a thread keeps a running max
  // for its current row and folds it into the row's shared max with an integer atomicMax on
  // the bits (|x| >= 0 orders like its bits, and a NaN's bits exceed inf's: NaN propagates,
  // as in the reference's amax). Ends with a barrier.
  template <int NT>
  __device__ static void setup(const Args& a, int b0, int b1, unsigned char* smem, Block& blk) {
    constexpr int kMp = 8 * NT;
    auto* scale = reinterpret_cast<float*>(smem);
    auto* amax_bits = reinterpret_cast<unsigned int*>(smem);  // the same words, before they hold scales
    auto* q = reinterpret_cast<int8_t*>(smem + kScaleBytes);
    const T* x = static_cast<const T*>(a.x);
    if (threadIdx.x < kMp) amax_bits[threadIdx.x] = 0u;
    __syncthreads();
    const int64_t kv = a.K / 8;  // 16-byte vectors a row (K % 8 == 0)
    int row = -1;
    unsigned int run = 0u;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < a.M * kv; i += blockDim.x) {
      const int m = static_cast<int>(i / kv);
      const uint4 r = __ldg(reinterpret_cast<const uint4*>(x) + i);
      const T* e = reinterpret_cast<const T*>(&r);
      unsigned int v = 0u;
#pragma unroll
      for (int j = 0; j < 8; ++j) v = max(v, __float_as_uint(fabsf(Act::to_float(e[j]))));
      if (m != row) {
        if (row >= 0) atomicMax(amax_bits + row, run);
        row = m;
        run = 0u;
      }
      run = max(run, v);
    }
    if (row >= 0) atomicMax(amax_bits + row, run);
    __syncthreads();
    if (threadIdx.x < a.M) scale[threadIdx.x] = __fdiv_rn(__uint_as_float(amax_bits[threadIdx.x]), 127.f);
    __syncthreads();
    const int k_range = (b1 - b0) * kBatchK, stride = row_stride(k_range);
    const int64_t k_begin = static_cast<int64_t>(b0) * kBatchK;
    const int vecs = k_range / 8;
    for (int i = threadIdx.x; i < kMp * vecs; i += blockDim.x) {
      const int m = i / vecs, v = i % vecs;
      const int64_t k = k_begin + 8 * v;
      uint32_t packed[2] = {0u, 0u};
      if (m < a.M && k < a.K) {
        const uint4 r = __ldg(reinterpret_cast<const uint4*>(x + m * a.K + k));
        const T* e = reinterpret_cast<const T*>(&r);
        const float s = scale[m];
#pragma unroll
        for (int j = 0; j < 8; ++j)
          packed[j / 4] |= (static_cast<uint32_t>(quantize_one(Act::to_float(e[j]), s)) & 0xFFu) << (8 * (j % 4));
      }
      *reinterpret_cast<uint2*>(q + m * stride + 8 * v) = make_uint2(packed[0], packed[1]);
    }
    __syncthreads();
    blk.q = q;
    blk.scale = scale;
    blk.stride = stride;
  }

  __device__ static void load_aux(const Args&, int, int, int, Aux&) {}

  template <int NT>
  __device__ static void batch(const Args& a, const Block& blk, int b, int g, int t, const uint4 (&w)[kLoads],
                               const Aux&, int (&acc)[NT][4]) {
    const int k_local = (b - blockIdx.y * a.batches_per_split) * kBatchK + 4 * t;
#pragma unroll
    for (int s = 0; s < kLoads; ++s) {  // k32 steps
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int8_t* row = blk.q + (nt * 8 + g) * blk.stride + k_local + 32 * s;
        mma_s8(acc[nt], w[s], *reinterpret_cast<const uint32_t*>(row),
               *reinterpret_cast<const uint32_t*>(row + 16));
      }
    }
  }

  // (float(acc) * a_scale[m]) * b_scale[n] + bias[n], each step rounded (no contraction).
  __device__ static float epilogue(const Args& a, const Block& blk, int acc, int m, int n) {
    const float v = __fmul_rn(__fmul_rn(__int2float_rn(acc), blk.scale[m]), static_cast<const float*>(a.scales)[n]);
    return a.bias ? __fadd_rn(v, a.bias[n]) : v;
  }
};

// 2:4 int8 with int8 activations (kernelswap.ops.sparse24's int8 values and meta): Int8W8's x
// quantization, numerics and epilogue, 5 loads a batch. Loads 0-3, k32 step s (word pair s % 2 of
// load s / 2): word 2 (s % 2) holds the kept pairs of group 8s + t (K 32s + 4t .. + 3) for row g
// (bytes 0, 1) and row g + 8 (bytes 2, 3), word 2 (s % 2) + 1 those of group 8s + 4 + t (K + 16).
// Load 4, 16-bit half s: the four nibbles in the order of the A registers (row g, row g + 8, of
// each group). One PRMT per register expands a pair into its 4 bytes, the selector from a
// 16-entry table in shared memory.
template <class Act>
struct Sparse24Int8 : Int8W8<Act> {
  using Base = Int8W8<Act>;
  using typename Base::Block;
  using Aux = typename Base::Aux;
  static constexpr int kLoads = 5;
  using Stream = PreparedStream<kLoads>;
  static constexpr int lut_offset(int k_range, int m, int mp) { return (Base::smem_bytes(k_range, m, mp) + 15) / 16 * 16; }
  static constexpr int smem_bytes(int k_range, int m, int mp) { return lut_offset(k_range, m, mp) + 16 * 4; }

  // PRMT source byte of dense position p: v0 (0), v1 (1) or zero (b's byte 4).
  __device__ static uint32_t source(int p, int i0, int i1) { return p == i0 ? 0u : p == i1 ? 1u : 4u; }

  template <int NT>
  __device__ static void setup(const Args& a, int b0, int b1, unsigned char* smem, Block& blk) {
    // Past the shared memory of the split's full K range (the last split's may be shorter), where
    // batch() finds it again from Int8W8's block (its scales start the shared memory).
    auto* lut = reinterpret_cast<uint32_t*>(smem + lut_offset(a.batches_per_split * kBatchK, a.M, 8 * NT));
    if (threadIdx.x < 16) {
      const int i0 = threadIdx.x & 3, i1 = threadIdx.x >> 2;
      lut[threadIdx.x] = source(0, i0, i1) | source(1, i0, i1) << 4 | source(2, i0, i1) << 8 |
                         source(3, i0, i1) << 12;
    }
    Base::template setup<NT>(a, b0, b1, smem, blk);  // ends with a barrier: the table is visible
  }

  template <int NT>
  __device__ static void batch(const Args& a, const Block& blk, int b, int g, int t, const uint4 (&w)[kLoads],
                               const Aux&, int (&acc)[NT][4]) {
    const int k_range = a.batches_per_split * kBatchK;
    const auto* lut = reinterpret_cast<const uint32_t*>(reinterpret_cast<const unsigned char*>(blk.scale) +
                                                        lut_offset(k_range, a.M, 8 * NT));
    const int k_local = (b - blockIdx.y * a.batches_per_split) * kBatchK + 4 * t;
#pragma unroll
    for (int s = 0; s < 8; ++s) {  // k32 steps
      const uint32_t lo = word(w[s / 2], 2 * (s % 2)), hi = word(w[s / 2], 2 * (s % 2) + 1);
      const uint32_t nib = word(w[4], s / 2) >> (16 * (s % 2));
      const uint4 ra = make_uint4(prmt(lo, 0u, lut[nib & 15u]), prmt(lo >> 16, 0u, lut[(nib >> 4) & 15u]),
                                  prmt(hi, 0u, lut[(nib >> 8) & 15u]), prmt(hi >> 16, 0u, lut[(nib >> 12) & 15u]));
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int8_t* row = blk.q + (nt * 8 + g) * blk.stride + k_local + 32 * s;
        mma_s8(acc[nt], ra, *reinterpret_cast<const uint32_t*>(row), *reinterpret_cast<const uint32_t*>(row + 16));
      }
    }
  }
};

}  // namespace gemv
}  // namespace kernelswap
