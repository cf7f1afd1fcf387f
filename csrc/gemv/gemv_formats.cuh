// The weight formats of the decode GEMVs: how one warp turns one batch of its streamed
// 16-byte loads (kBatchK = 256 values of K for its 16 rows) into MMAs, and the epilogue.
// Each layout is made at swap time by python/kernelswap/ops/gemv_layout.py, which documents
// the byte order; here each lane's 16 bytes per load are exactly its A fragments.
//
//   Int4<Act, GS>    W4A16: 4 loads a batch (64 K each: 4 k16 steps, one 32-bit word a step);
//                    nibbles -> (magic + q) Act pairs with one LOP3; each group's MMA sum is
//                    scaled in fp32 and its zero point taken out with the staged sums of x
//                    (fp16 scales, per row and group).
//   Int8W16<Act>     W8A16: 8 loads a batch (32 K each: 2 k16 steps); bytes (q + 128) ->
//                    exact Act pairs; per-row fp32 scale in the epilogue.
//   Int8W8<Act>      W8A8: 8 loads a batch (one m16n8k32 int8 step each), x quantized per
//                    token inside the kernel into shared memory, int32-exact accumulation,
//                    epilogue (acc * a_scale[m]) * b_scale[n] + bias[n] rounded step by step.
//   Sparse24<Act>    2:4 bf16 / fp16: 8 loads of kept values and 1 of metadata a batch (0.56x
//                    the bytes of the dense weight); PRMT expands each pair into its dense A
//                    register.
//   Sparse24Int8<Act> 2:4 int8, W8A8's x quantization and epilogue: 4 loads of kept values and 1
//                    of metadata a batch (0.63x the bytes of the int8 weight).
// The float formats read x from shared memory (XStage: the block's K range, staged once).
//
// Interface the kernel (gemv_kernel.cuh) uses:
//   kWarps, kBlocksPerSm, kLoads, Acc, Aux (per-batch side data, e.g. scales), Block (per-block
//   state), smem_bytes(k_range, m, mp), setup(...), load_aux(...), batch(...), epilogue(...).
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
// per lane. Rows are padded by 32 bytes: the 8 rows a warp reads fall in two bank sets, the
// minimum for 256 bytes. With GS > 0 it also holds, for each group of GS values of K in the
// range and each of the kMp tokens, the fp32 sum of x over the group (0 past M), which the
// int4 format needs to take its zero point out after the MMA.
//
// kNatural keeps each chunk in K order instead, so lane t's 8 bytes of a step are values
// 4t .. 4t + 3: the 2:4 format maps a lane's B-fragment rows (2t, 2t + 1, 2t + 8, 2t + 9) to
// those four values, the one group of four its A fragment holds (the product does not change
// when A and B permute K alike).
template <int GS, bool kNatural = false>
struct XStage {
  static constexpr int row_bytes(int k_range) { return 2 * k_range + 32; }
  static constexpr int sums_offset(int k_range, int m) { return (m + 1) * row_bytes(k_range); }
  static constexpr int bytes(int k_range, int m, int mp) {
    return sums_offset(k_range, m) + (GS ? k_range / GS * mp * 4 : 0);
  }

  const unsigned char* base;  // row 0 of the block's K range
  const float* sums;          // (k_range / GS, kMp) per-group sums, GS > 0
  int row_bytes_;

  // Fills the stage (all threads of the block; ends with a barrier).
  template <class Act, int kMp>
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
    if constexpr (GS > 0) {
      __syncthreads();
      auto* s = reinterpret_cast<float*>(smem + sums_offset(k_range, a.M));
      const int groups = k_range / GS;
      for (int i = threadIdx.x; i < groups * kMp; i += blockDim.x) {
        const int grp = i / kMp, m = i % kMp;
        float sum = 0.f;
        if (m < a.M) {
          const auto* w = reinterpret_cast<const uint4*>(smem + m * rb + 2 * GS * grp);
#pragma unroll 4
          for (int c = 0; c < GS / 8; ++c) {
            const uint4 r = w[c];
            const typename Act::T* e = reinterpret_cast<const typename Act::T*>(&r);
#pragma unroll
            for (int j = 0; j < 8; ++j) sum += Act::to_float(e[j]);
          }
        }
        s[i] = sum;
      }
      sums = s;
    }
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

// (a & mask) | c in one LOP3.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(c));
  return d;
}

template <class Act, int GS>
struct FloatBase {
  using Acc = float;
  // Block shape and split target, per format, from the H200 sweep of benchmarks/gemv_lab.cu
  // (2026-12-01, 8192x28672 and 4096x14336, M 1/4/16): int4 is fastest in blocks of 4 warps
  // with about 4 blocks a SM (M = 1: 74.8% of copy bandwidth, against 59.7% with 8 warps and 2);
  // the int8 formats in blocks of 8 warps with 2 (W8A16 M = 1: 82.0% against 71.6%).
  static constexpr int kWarps = 4, kBlocksPerSm = 4;
  using Block = XStage<GS>;
  static constexpr int smem_bytes(int k_range, int m, int mp) { return Block::bytes(k_range, m, mp); }
  template <int NT>
  __device__ static void setup(const Args& a, int b0, int b1, unsigned char* smem, Block& blk) {
    blk.template fill<Act, 8 * NT>(a, b0, b1, smem);
  }
};

// W4A16. Each pair of codes goes into the MMA as (magic + q) exactly (one LOP3), so the
// group's MMA sum is S = sum (magic + q) x = sum (q - z) x + (magic + z) sum x, and the
// group adds scale * S - scale * (magic + z) * sum x (the staged group sums) to acc.
template <class Act, int GS>
struct Int4 : FloatBase<Act, GS> {
  static_assert(GS == 32 || GS == 64 || GS == 128, "group size");
  using Block = XStage<GS>;
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
  __device__ static void batch(const Args& a, const Block& blk, int b, int g, int t, const uint4 (&w)[kLoads],
                               const Aux& aux, float (&acc)[NT][4]) {
    const unsigned char* rows[NT];
    blk.template batch_rows<NT>(a, b, g, rows);
    const int b_local = b - blockIdx.y * a.batches_per_split;
    constexpr float kMagic = Act::kMagicValue;
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
      const uint32_t q = word(w[s / 4], s % 4);
      uint32_t ra[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) ra[p] = and_or(q >> (4 * p), 0x000F000Fu, Act::kMagic4);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint2 xb = x_frag(rows[nt], s, t);
        Act::mma(gacc[nt], ra, xb.x, xb.y);
      }
      if (s % kSpg == kSpg - 1) {
        const float2 sc = __half22float2(*reinterpret_cast<const __half2*>(&aux.s[grp]));
        const float o0 = sc.x * (kMagic + static_cast<float>(aux.z[grp] & 0xFFu));
        const float o1 = sc.y * (kMagic + static_cast<float>((aux.z[grp] >> 8) & 0xFFu));
        const float* sums = blk.sums + (b_local * kGroups + grp) * (8 * NT) + 2 * t;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float2 xs = *reinterpret_cast<const float2*>(sums + 8 * nt);  // tokens 8 nt + 2t, + 1
          acc[nt][0] += gacc[nt][0] * sc.x - o0 * xs.x;
          acc[nt][1] += gacc[nt][1] * sc.x - o0 * xs.y;
          acc[nt][2] += gacc[nt][2] * sc.y - o1 * xs.x;
          acc[nt][3] += gacc[nt][3] * sc.y - o1 * xs.y;
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
struct Int8W16 : FloatBase<Act, 0> {
  static constexpr int kWarps = 8, kBlocksPerSm = 2;
  using Block = XStage<0>;
  static constexpr int kLoads = 8;
  struct Aux {};
  __device__ static void load_aux(const Args&, int, int, int, Aux&) {}

  template <int NT>
  __device__ static void batch(const Args& a, const Block& blk, int b, int g, int t, const uint4 (&w)[kLoads],
                               const Aux&, float (&acc)[NT][4]) {
    mma_steps16<Act, NT>(a, blk, b, g, t, acc, [&](int s, uint32_t (&ra)[4]) {  // words (2s, 2s + 1) of the batch
      const uint32_t lo = word(w[s / 2], 2 * (s % 2)), hi = word(w[s / 2], 2 * (s % 2) + 1);
      ra[0] = Act::from_biased_bytes(lo, 0);
      ra[1] = Act::from_biased_bytes(lo, 1);
      ra[2] = Act::from_biased_bytes(hi, 0);
      ra[3] = Act::from_biased_bytes(hi, 1);
    });
  }

  // out = (x @ w_q.T) * w_scale[n] + bias[n]
  __device__ static float epilogue(const Args& a, const Block&, float acc, int, int n) {
    const float v = __fmul_rn(acc, static_cast<const float*>(a.scales)[n]);
    return a.bias ? __fadd_rn(v, a.bias[n]) : v;
  }
};

// 2:4 bf16 / fp16 (kernelswap.ops.sparse24's values and meta). A batch is 9 loads a lane: loads
// 0-7 hold the kept values, load 8 the metadata. At k16 step s (word pair s % 2 of load s / 2)
// a lane holds, for rows g and g + 8, the two kept values of group 4s + t of the batch (K
// 16s + 4t .. + 3), and byte s of load 8 their nibbles (row g low, row g + 8 high; a nibble is
// i0 | i1 << 2, the kept positions). One PRMT per register expands a pair into its dense A
// register with the zeros in place: the selector for each nibble comes from a 16-entry table in
// shared memory (16 words in 16 banks: no conflicts). x is staged in K order (XStage kNatural).
template <class Act>
struct Sparse24 {
  static constexpr int kWarps = 8, kBlocksPerSm = 2;  // 9 loads a batch, as the int8 formats' 8
  using Acc = float;
  static constexpr int kLoads = 9;
  using Stage = XStage<0, true>;
  struct Aux {};
  struct Block {
    Stage x;
    const uint32_t* lut;  // nibble -> PRMT selectors: low half (k 0, 1), high half (k 2, 3)
    template <int NT>
    __device__ void batch_rows(const Args& a, int b, int g, const unsigned char* (&rows)[NT]) const {
      x.template batch_rows<NT>(a, b, g, rows);
    }
  };
  static constexpr int lut_offset(int k_range, int m, int mp) { return (Stage::bytes(k_range, m, mp) + 15) / 16 * 16; }
  static constexpr int smem_bytes(int k_range, int m, int mp) { return lut_offset(k_range, m, mp) + 16 * 4; }

  // PRMT source bytes of dense position p: v0 (bytes 0, 1), v1 (bytes 2, 3) or zero (b's byte 4).
  __device__ static uint32_t source(int p, int i0, int i1) { return p == i0 ? 0x10u : p == i1 ? 0x32u : 0x44u; }

  template <int NT>
  __device__ static void setup(const Args& a, int b0, int b1, unsigned char* smem, Block& blk) {
    auto* lut = reinterpret_cast<uint32_t*>(smem + lut_offset((b1 - b0) * kBatchK, a.M, 8 * NT));
    if (threadIdx.x < 16) {
      const int i0 = threadIdx.x & 3, i1 = threadIdx.x >> 2;
      lut[threadIdx.x] = source(0, i0, i1) | source(1, i0, i1) << 8 | source(2, i0, i1) << 16 |
                         source(3, i0, i1) << 24;
    }
    blk.x.template fill<Act, 8 * NT>(a, b0, b1, smem);  // ends with a barrier: the table is visible
    blk.lut = lut;
  }

  __device__ static void load_aux(const Args&, int, int, int, Aux&) {}

  template <int NT>
  __device__ static void batch(const Args& a, const Block& blk, int b, int g, int t, const uint4 (&w)[kLoads],
                               const Aux&, float (&acc)[NT][4]) {
    mma_steps16<Act, NT>(a, blk, b, g, t, acc, [&](int s, uint32_t (&ra)[4]) {
      const uint32_t lo = word(w[s / 2], 2 * (s % 2)), hi = word(w[s / 2], 2 * (s % 2) + 1);  // rows g, g + 8
      const uint32_t nib = word(w[8], s / 4) >> (8 * (s % 4));
      const uint32_t sel_lo = blk.lut[nib & 15u], sel_hi = blk.lut[(nib >> 4) & 15u];
      ra[0] = prmt(lo, 0u, sel_lo);
      ra[1] = prmt(hi, 0u, sel_hi);
      ra[2] = prmt(lo, 0u, sel_lo >> 16);
      ra[3] = prmt(hi, 0u, sel_hi >> 16);
    });
  }

  // out = x @ W.T + bias
  __device__ static float epilogue(const Args& a, const Block&, float acc, int, int n) {
    return a.bias ? acc + a.bias[n] : acc;
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
  static constexpr int kWarps = 8, kBlocksPerSm = 2;  // as Int8W16 (see FloatBase)
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
