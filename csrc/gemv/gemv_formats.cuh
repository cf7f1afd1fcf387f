// The weight formats of the decode GEMVs: how one warp turns one batch of its streamed
// 16-byte loads (kBatchK = 256 values of K for its 16 rows) into MMAs, and the epilogue.
// Each layout is made at swap time by python/kernelswap/ops/gemv_layout.py, which documents
// the byte order; here each lane's 16 bytes per load are exactly its A fragments.
//
//   Int4<Act, GS>    W4A16: 4 loads a batch (64 K each: 4 k16 steps, one 32-bit word a step);
//                    nibbles -> Act pairs with LOP3 + one exact subtraction of (magic + zero);
//                    each group's MMA sum is scaled in fp32 (fp16 scales, per row and group).
//   Int8W16<Act>     W8A16: 8 loads a batch (32 K each: 2 k16 steps); bytes (q + 128) ->
//                    exact Act pairs; per-row fp32 scale in the epilogue.
//   Int8W8<Act>      W8A8: 8 loads a batch (one m16n8k32 int8 step each), x quantized per
//                    token inside the kernel into shared memory, int32-exact accumulation,
//                    epilogue (acc * a_scale[m]) * b_scale[n] + bias[n] rounded step by step.
//
// Interface the kernel (gemv_kernel.cuh) uses:
//   kLoads, Acc, Aux (per-batch side data, e.g. scales), Block (per-block state),
//   smem_bytes(k_range, mp), setup(...), load_aux(...), batch(...), epilogue(...).
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

// Activation pairs for the 16-bit B fragment: x[m, k], x[m, k + 1] (K is even, k is even),
// zero past M or K. Read through L1, which holds x for the block's warps.
template <class Act>
__device__ __forceinline__ uint32_t x_pair(const Args& a, int m, int64_t k) {
  if (m >= a.M || k >= a.K) return 0u;
  return __ldg(reinterpret_cast<const unsigned int*>(static_cast<const typename Act::T*>(a.x) + m * a.K + k));
}

struct NoBlock {};

// Shared by the float formats: no block state, no shared memory.
struct FloatBase {
  using Acc = float;
  using Block = NoBlock;
  static constexpr int smem_bytes(int, int) { return 0; }
  template <int NT>
  __device__ static void setup(const Args&, int, int, unsigned char*, Block&) {}
};

template <class Act, int GS>
struct Int4 : FloatBase {
  static_assert(GS == 32 || GS == 64 || GS == 128, "group size");
  static constexpr int kLoads = 4;
  static constexpr int kGroups = kBatchK / GS;  // groups a batch
  static constexpr int kStepsPerGroup = GS / 16;
  struct Aux {
    uint32_t s[kGroups];  // fp16x2: (scale of row g, scale of row g + 8)
    uint32_t z[kGroups];  // bytes 0, 1: (zero of row g, zero of row g + 8)
  };

  __device__ static void load_aux(const Args& a, int tile, int b, int g, Aux& aux) {
    const int64_t base = (static_cast<int64_t>(tile) * a.batches + b) * kGroups * 8 + g;
    const auto* s = static_cast<const unsigned int*>(a.scales) + base;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) aux.s[i] = __ldg(s + i * 8);
    if (a.zeros) {
      const auto* z = static_cast<const unsigned short*>(a.zeros) + base;
#pragma unroll
      for (int i = 0; i < kGroups; ++i) aux.z[i] = __ldg(z + i * 8);
    } else {
#pragma unroll
      for (int i = 0; i < kGroups; ++i) aux.z[i] = 0x0808u;  // symmetric: zero point 8
    }
  }

  template <int NT>
  __device__ static void batch(const Args& a, const Block&, int b, int g, int t, const uint4 (&w)[kLoads],
                               const Aux& aux, float (&acc)[NT][4]) {
    const int64_t k0 = static_cast<int64_t>(b) * kBatchK;
    float gacc[NT][4];
#pragma unroll
    for (int s = 0; s < kLoads * 4; ++s) {  // k16 steps
      constexpr int kSpg = kStepsPerGroup;
      const int grp = s / kSpg;
      if (s % kSpg == 0) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) gacc[nt][i] = 0.f;
      }
      // (magic + zero) for row g and row g + 8, in both halves.
      const uint32_t zm0 = Act::kMagic4 + (aux.z[grp] & 0xFFu) * 0x10001u;
      const uint32_t zm1 = Act::kMagic4 + ((aux.z[grp] >> 8) & 0xFFu) * 0x10001u;
      const uint32_t q = word(w[s / 4], s % 4);
      uint32_t ra[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) ra[p] = Act::sub2(((q >> (4 * p)) & 0x000F000Fu) | Act::kMagic4, (p & 1) ? zm1 : zm0);
      const int64_t k = k0 + 16 * s + 2 * t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int m = nt * 8 + g;
        Act::mma(gacc[nt], ra, x_pair<Act>(a, m, k), x_pair<Act>(a, m, k + 8));
      }
      if (s % kSpg == kSpg - 1) {
        const float2 sc = __half22float2(*reinterpret_cast<const __half2*>(&aux.s[grp]));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          acc[nt][0] += gacc[nt][0] * sc.x;
          acc[nt][1] += gacc[nt][1] * sc.x;
          acc[nt][2] += gacc[nt][2] * sc.y;
          acc[nt][3] += gacc[nt][3] * sc.y;
        }
      }
    }
  }

  // out = x @ w.T + bias (the groups' scales are already in acc).
  __device__ static float epilogue(const Args& a, const Block&, float acc, int, int n) {
    return a.bias ? acc + a.bias[n] : acc;
  }
};

template <class Act>
struct Int8W16 : FloatBase {
  static constexpr int kLoads = 8;
  struct Aux {};
  __device__ static void load_aux(const Args&, int, int, int, Aux&) {}

  template <int NT>
  __device__ static void batch(const Args& a, const Block&, int b, int g, int t, const uint4 (&w)[kLoads],
                               const Aux&, float (&acc)[NT][4]) {
    const int64_t k0 = static_cast<int64_t>(b) * kBatchK;
#pragma unroll
    for (int s = 0; s < kLoads * 2; ++s) {  // k16 steps: words (2j, 2j + 1) of load s / 2
      const uint32_t lo = word(w[s / 2], 2 * (s % 2)), hi = word(w[s / 2], 2 * (s % 2) + 1);
      const uint32_t ra[4] = {Act::from_biased_bytes(lo, 0), Act::from_biased_bytes(lo, 1),
                              Act::from_biased_bytes(hi, 0), Act::from_biased_bytes(hi, 1)};
      const int64_t k = k0 + 16 * s + 2 * t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int m = nt * 8 + g;
        Act::mma(acc[nt], ra, x_pair<Act>(a, m, k), x_pair<Act>(a, m, k + 8));
      }
    }
  }

  // out = (x @ w_q.T) * w_scale[n] + bias[n]
  __device__ static float epilogue(const Args& a, const Block&, float acc, int, int n) {
    const float v = __fmul_rn(acc, static_cast<const float*>(a.scales)[n]);
    return a.bias ? __fadd_rn(v, a.bias[n]) : v;
  }
};

// One value of quantize_per_token_ref: round_half_even(x / s) clamped to [-127, 127];
// 0 for an all-zero row (s == 0) and where the quotient is NaN (nan_to_num).
__device__ __forceinline__ int quantize_one(float x, float s) {
  if (s == 0.f) return 0;
  const float v = rintf(__fdiv_rn(x, s));
  if (v != v) return 0;
  return static_cast<int>(fminf(fmaxf(v, -127.f), 127.f));
}

template <class Act>
struct Int8W8 {
  using T = typename Act::T;
  using Acc = int;
  static constexpr int kLoads = 8;
  static constexpr int kScaleBytes = 64 * 4;  // a_scale of up to 64 tokens, ahead of q
  struct Aux {};
  struct Block {
    const int8_t* q;     // (mp, stride) the block's K range of x, quantized
    const float* scale;  // (M,) per-token scales
    int stride;
  };
  static constexpr int row_stride(int k_range) { return k_range + 16; }  // 16: no bank conflicts
  static constexpr int smem_bytes(int k_range, int mp) { return kScaleBytes + mp * row_stride(k_range); }

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
    for (int64_t i = threadIdx.x; i < a.M * kv; i += kThreads) {
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
    for (int i = threadIdx.x; i < kMp * vecs; i += kThreads) {
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

}  // namespace gemv
}  // namespace kernelswap
