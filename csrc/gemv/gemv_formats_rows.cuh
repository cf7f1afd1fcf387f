// The int8 decode GEMV formats that read the (N, K) int8 weight as the layer holds it (the
// CUTLASS GEMM's and the Triton GEMMs' operand; RowStream, gemv_stream.cuh), so an int8 layer
// keeps one copy of its weight. K % 16 == 0.
//
//   Int8W8Rows<Act>   W8A8: Int8W8's in-kernel per-token quantization of x, its numerics and
//                     epilogue (bit-exact with the prepared-layout format).
//   Int8W16Rows<Act>  W8A16: Int8W16's numerics and epilogue.
//
// Lane (g, t) holds, for chunk c of a batch (loads 2c, 2c + 1), 16 values of rows g and g + 8 at
// K 64c + 16t .. + 15. The MMA's K order is free as long as A and B permute K alike, so each
// MMA takes A's K positions from one lane's words and reads x at the same real K: lane t's
// B fragment is x at K 64c + 16t + (what its A registers hold), which x's natural K order in
// shared memory gives as one 16-byte read a chunk and token fragment.
#pragma once

#include "gemv/gemv_formats.cuh"
#include "gemv/gemv_formats_int8.cuh"

namespace kernelswap {
namespace gemv {

// W8A8. m16n8k32 step (c, h): A reg 0 / 2 = row g's words 2h / 2h + 1 (real K 64c + 16t + 8h +
// 0..3 / 4..7), reg 1 / 3 the same of row g + 8; B = x's quantized bytes at that K, words
// 2h, 2h + 1 of the lane's 16-byte read. Rows of quantized x are padded by 64 bytes, so the 8
// lanes of a quarter warp (rows g, g + 1, t = 0..3) read 128 distinct bytes.
template <class Act>
struct Int8W8Rows : Int8W8<Act, 64> {
  using Base = Int8W8<Act, 64>;
  using typename Base::Block;
  using Aux = typename Base::Aux;
  using Stream = RowStream;

  template <int NT>
  __device__ static void batch(const Args& a, const Block& blk, int b, int g, int t, const uint4 (&w)[8],
                               const Aux&, int (&acc)[NT][4]) {
    const int k_local = (b - blockIdx.y * a.batches_per_split) * kBatchK + 16 * t;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint4 lo = w[2 * c], hi = w[2 * c + 1];  // rows g, g + 8
      const uint4 a0 = make_uint4(lo.x, hi.x, lo.y, hi.y), a1 = make_uint4(lo.z, hi.z, lo.w, hi.w);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint4 xq = *reinterpret_cast<const uint4*>(blk.q + (nt * 8 + g) * blk.stride + k_local + 64 * c);
        mma_s8(acc[nt], a0, xq.x, xq.y);
        mma_s8(acc[nt], a1, xq.z, xq.w);
      }
    }
  }
};

// W8A16. m16n8k16 step (c, j): A reg 0 / 2 = bytes 0, 1 / 2, 3 of row g's word j (real K 64c +
// 16t + 4j + 0, 1 / 2, 3), flipped to q + 128 for Act::from_biased_bytes; reg 1 / 3 the same of
// row g + 8; B = x at that K (8 bytes). x is staged in K order with rows padded by 16 bytes, so a
// quarter warp's 16-byte reads (rows g, g + 1, t = 0..3, 32 bytes apart) are conflict-free.
template <class Act>
struct Int8W16Rows : Int8W16<Act> {
  using Block = XStage<true, 16>;
  using Aux = typename Int8W16<Act>::Aux;
  using Stream = RowStream;
  static constexpr int smem_bytes(int k_range, int m, int mp) { return Block::bytes(k_range, m, mp); }
  template <int NT>
  __device__ static void setup(const Args& a, int b0, int b1, unsigned char* smem, Block& blk) {
    blk.template fill<Act>(a, b0, b1, smem);
  }

  template <int NT>
  __device__ static void batch(const Args& a, const Block& blk, int b, int g, int t, const uint4 (&w)[8],
                               const Aux&, float (&acc)[NT][4]) {
    const unsigned char* rows[NT];
    blk.template batch_rows<NT>(a, b, g, rows);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
#pragma unroll
      for (int q = 0; q < 2; ++q) {  // words 2q, 2q + 1: one 16-byte read of x a token fragment
        uint32_t ra[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const uint32_t lo = word(w[2 * c], 2 * q + j) ^ 0x80808080u, hi = word(w[2 * c + 1], 2 * q + j) ^ 0x80808080u;
          ra[j][0] = Act::from_biased_bytes(lo, 0);
          ra[j][1] = Act::from_biased_bytes(hi, 0);
          ra[j][2] = Act::from_biased_bytes(lo, 1);
          ra[j][3] = Act::from_biased_bytes(hi, 1);
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint4 xv = *reinterpret_cast<const uint4*>(rows[nt] + 128 * c + 32 * t + 16 * q);
          Act::mma(acc[nt], ra[0], xv.x, xv.y);
          Act::mma(acc[nt], ra[1], xv.z, xv.w);
        }
      }
    }
  }
};

}  // namespace gemv
}  // namespace kernelswap
