// The weight formats of the decode GEMVs: how one warp turns one batch of its streamed 16-byte
// loads (kBatchK = 256 values of K for its 16 rows) into MMAs, and the epilogue. The formats with
// float activations are here, Int8W8 and Sparse24Int8 in gemv_formats_int8.cuh, the int8 formats
// on the layer's own (N, K) weight in gemv_formats_rows.cuh, and what they share (Args, XStage,
// the k16 step loop) in gemv_stage.cuh.
// Each layout is made at swap time by python/kernelswap/ops/gemv_layout.py, which documents
// the byte order; here each lane's 16 bytes per load are exactly its A fragments.
//
//   Int4<Act, GS>    W4A16: 4 loads a batch (64 K each: 4 k16 steps, one 32-bit word a step);
//                    nibbles -> (magic + q) Act pairs with one LOP3, minus (magic + z) -> exact
//                    (q - z); each group's MMA sum is scaled in fp32 (fp16 scales, per row and
//                    group).
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
//   kWarps, kBlocksPerSm, kPdl, kLoads, Stream (where the loads come from: gemv_stream.cuh), Acc,
//   Aux (per-batch side data, e.g. scales), Block (per-block state), smem_bytes(k_range, m, mp),
//   setup(...), load_aux(...), batch(...), epilogue(...).
#pragma once

#include "gemv/gemv_stream.cuh"

namespace kernelswap {
namespace gemv {

// (a & mask) | c in one LOP3.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(c));
  return d;
}

template <class Act>
struct FloatBase {
  using Acc = float;
  // Block shape and split target, per format, from the H200 sweep of benchmarks/gemv_lab.cu
  // (2026-12-01, 8192x28672 and 4096x14336, M 1/4/16): int4 is fastest in blocks of 4 warps
  // with about 4 blocks a SM (M = 1: 74.8% of copy bandwidth, against 59.7% with 8 warps and 2);
  // the int8 formats in blocks of 8 warps with 2 (W8A16 M = 1: 82.0% against 71.6%).
  static constexpr int kWarps = 4, kBlocksPerSm = 4;
  // Launched with programmatic dependent launch by default (gemv_ops.cu pdl_on), per format. In the
  // HF Llama L2 step on an H200 (benchmarks/decode_profile.py --compiled, 2026-12-02, wall ms/step,
  // benchmarks/results/pdl_ab.txt) one process each gave int4 1.066 with PDL against 1.184
  // without and W8A8 1.514 against 1.373, so int4 has it and the rest not; three alternating
  // processes each later gave int4 0.909-1.224 with and 0.933-1.228 without, W8A8 1.066-1.167 /
  // 1.097-1.432, 2:4 1.015-1.268 / 1.055-1.105, bf16 itself 1.137-1.397: within the noise of a
  // step between processes. KERNELSWAP_PDL=all / 0 switch it for every format.
  static constexpr bool kPdl = false;
  using Block = XStage<>;
  static constexpr int smem_bytes(int k_range, int m, int mp) { return Block::bytes(k_range, m, mp); }
  template <int NT>
  __device__ static void setup(const Args& a, int b0, int b1, unsigned char* smem, Block& blk) {
    blk.template fill<Act>(a, b0, b1, smem);
  }
};

// W4A16. Each code goes into the MMA as q - z exactly: one LOP3 makes the pair (magic + q), one
// subtraction of the pair (magic + z) leaves (q - z) (small integers, exact in bf16 and fp16, zeros
// in [0, 15] as kernelswap.ops.int4 has them), so the group's MMA sum is sum (q - z) x and the
// group adds scale * sum to acc.
template <class Act, int GS>
struct Int4 : FloatBase<Act> {
  static_assert(GS == 32 || GS == 64 || GS == 128, "group size");
  static constexpr bool kPdl = true;  // see FloatBase
  using Block = typename FloatBase<Act>::Block;
  static constexpr int kLoads = 4;
  using Stream = PreparedStream<kLoads>;
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
    float gacc[NT][4];
    uint32_t mz[2];  // the pairs (magic + z) of rows g and g + 8 (a zero below 16 is exact there)
#pragma unroll
    for (int s = 0; s < kLoads * 4; ++s) {  // k16 steps
      constexpr int kSpg = kStepsPerGroup;
      const int grp = s / kSpg;
      if (s % kSpg == 0) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) gacc[nt][i] = 0.f;
        mz[0] = Act::kMagic4 | ((aux.z[grp] & 0xFFu) * 0x00010001u);
        mz[1] = Act::kMagic4 | (((aux.z[grp] >> 8) & 0xFFu) * 0x00010001u);
      }
      const uint32_t q = word(w[s / 4], s % 4);
      uint32_t ra[4];  // A registers 0, 2: row g; 1, 3: row g + 8
#pragma unroll
      for (int p = 0; p < 4; ++p) ra[p] = Act::sub2(and_or(q >> (4 * p), 0x000F000Fu, Act::kMagic4), mz[p % 2]);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint2 xb = x_frag(rows[nt], s, t);
        Act::mma(gacc[nt], ra, xb.x, xb.y);
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
struct Int8W16 : FloatBase<Act> {
  static constexpr int kWarps = 8, kBlocksPerSm = 2;
  using Block = typename FloatBase<Act>::Block;
  static constexpr int kLoads = 8;
  using Stream = PreparedStream<kLoads>;
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

  // out = (x @ w_q.T) * w_scale[n] + bias[n] (also Int8W16Rows', whose Block differs)
  template <class AnyBlock>
  __device__ static float epilogue(const Args& a, const AnyBlock&, float acc, int, int n) {
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
  static constexpr bool kPdl = false;                  // see FloatBase
  using Acc = float;
  static constexpr int kLoads = 9;
  using Stream = PreparedStream<kLoads>;
  using Stage = XStage<true>;
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
    blk.x.template fill<Act>(a, b0, b1, smem);  // ends with a barrier: the table is visible
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

}  // namespace gemv
}  // namespace kernelswap
