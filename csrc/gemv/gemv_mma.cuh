// Building blocks of the decode GEMVs (csrc/gemv): streaming loads, the warp-level tensor-core
// MMAs, and the activation types (bf16 / fp16) with their exact int -> float tricks.
//
// The GEMVs compute out^T = W x^T with the weight as the MMA's A operand (16 output rows a
// warp) and the activations as B (8 tokens a fragment), so one warp's 16-byte weight loads
// feed mma.sync directly and M = 1..64 only changes how many B fragments there are.
// Fragment layouts (PTX ISA, mma.m16n8k16 / m16n8k32), lane = 4 * g + t:
//   A (16 x 16, 16-bit): reg 0 (row g, k 2t..2t+1), reg 1 (row g+8, same k),
//                        reg 2 (row g, k 2t+8..2t+9), reg 3 (row g+8, k 2t+8..2t+9)
//   A (16 x 32, int8):   reg 0 (row g, k 4t..4t+3), reg 1 (row g+8), reg 2 (row g, k 16+4t..),
//                        reg 3 (row g+8, k 16+4t..)
//   B (16 x 8, 16-bit):  reg 0 (k 2t..2t+1, col g), reg 1 (k 2t+8..2t+9, col g)
//   B (32 x 8, int8):    reg 0 (k 4t..4t+3, col g), reg 1 (k 16+4t.., col g)
//   C (16 x 8, 32-bit):  c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1)
// Needs sm_80 or later (mma.sync bf16 and int8, createpolicy, ld.global.nc.L1::no_allocate).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace kernelswap {
namespace gemv {

// Warps a block (each owns one tile of 16 output rows) are the format's F::kWarps, at least
// kMinWarps: the split-K counters are sized for blocks of kMinWarps tiles.
constexpr int kMinWarps = 4;
constexpr int kTileN = 16;          // output rows a warp (the MMA's M)
constexpr int kBatchK = 256;        // K elements a warp streams per loop iteration (all formats)

// An L2 policy that evicts the streamed weights first, so activations and partials stay.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// 16 bytes of weights, read once: not cached in L1, evicted first from L2.
__device__ __forceinline__ uint4 ld_stream(const uint4* p, uint64_t policy) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(policy));
  return v;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// D += A * B, int8 x int8 -> int32 (exact).
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint4& a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

// D += A * B, m16n8k16 with 16-bit inputs of PTX type TY ("bf16" / "f16"), fp32 accumulators.
#define KS_GEMV_MMA_16BIT(TY, d, a, b0, b1)                                                                 \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY                                          \
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                       \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                             \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

// a - b on two packed pairs of V2 (__half2 / __nv_bfloat162).
template <class V2>
__device__ __forceinline__ uint32_t sub2_as(uint32_t a, uint32_t b) {
  V2 r = __hsub2(*reinterpret_cast<const V2*>(&a), *reinterpret_cast<const V2*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// The activation types. Each names its MMA and turns small integers held in packed
// registers into exact pairs of its own type:
//   kMagic4 | nibble   = (magic + nibble) exactly (128 + q for bf16, 1024 + q for fp16);
//   from_biased_bytes: two bytes holding q0 + 128, q1 + 128 -> the pair (q0, q1) exactly.
struct BF16 {
  using T = __nv_bfloat16;
  static constexpr uint32_t kMagic4 = 0x43004300u;  // bf16x2 (128, 128)
  static constexpr float kMagicValue = 128.f;      // kMagic4 | nibble = kMagicValue + nibble
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    KS_GEMV_MMA_16BIT("bf16", d, a, b0, b1);
  }
  // a - b on packed pairs; exact here (both are small integers plus the same magic).
  __device__ static uint32_t sub2(uint32_t a, uint32_t b) { return sub2_as<__nv_bfloat162>(a, b); }
  // bytes (2 * hi, 2 * hi + 1) of w, each q + 128, -> (q0, q1): through fp32, where 2^23 + byte
  // is exact (bf16 has too few mantissa bits for a byte).
  __device__ static uint32_t from_biased_bytes(uint32_t w, int hi) {
    const float f0 = __int_as_float(prmt(w, 0x4B000000u, hi ? 0x7442u : 0x7440u)) - 8388736.f;
    const float f1 = __int_as_float(prmt(w, 0x4B000000u, hi ? 0x7443u : 0x7441u)) - 8388736.f;
    __nv_bfloat162 r = __floats2bfloat162_rn(f0, f1);
    return *reinterpret_cast<uint32_t*>(&r);
  }
  __device__ static T cast(float v) { return __float2bfloat16_rn(v); }
  __device__ static float to_float(T v) { return __bfloat162float(v); }
};

struct FP16 {
  using T = __half;
  static constexpr uint32_t kMagic4 = 0x64006400u;  // fp16x2 (1024, 1024)
  static constexpr float kMagicValue = 1024.f;
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    KS_GEMV_MMA_16BIT("f16", d, a, b0, b1);
  }
  __device__ static uint32_t sub2(uint32_t a, uint32_t b) { return sub2_as<__half2>(a, b); }
  // 0x64XX is 1024 + XX exactly: one PRMT and one subtraction of 1152 = 1024 + 128.
  __device__ static uint32_t from_biased_bytes(uint32_t w, int hi) {
    return sub2(prmt(w, 0x64646464u, hi ? 0x7362u : 0x5140u), 0x64806480u);
  }
  __device__ static T cast(float v) { return __float2half_rn(v); }
  __device__ static float to_float(T v) { return __half2float(v); }
};

}  // namespace gemv
}  // namespace kernelswap
