// The one decode GEMV kernel, templated on the weight format F (gemv_formats.cuh and
// gemv_formats_int8.cuh) and on NT, the number of 8-token B fragments (M <= 8 * NT).
//
// Grid: x = blocks of F::kWarps tiles (16 output rows each, one warp a tile), y = splits of K.
// Each warp streams its tile's weights over the split's batches (kBatchK values of K each,
// F::kLoads 16-byte loads a lane from F::Stream (gemv_stream.cuh), the next batch's loads
// issued before this one's math) and
// keeps NT x 4 accumulators. With one split the warp writes out directly; with several, each
// block writes its partials (splits, M, N) to the workspace and the last block of a column to
// arrive (a counter per grid column, reset by that block) adds them in split order, so the
// result does not depend on which block finishes last, and applies the epilogue.
#pragma once

#include "gemv/gemv_formats.cuh"
#include "gemv/gemv_formats_int8.cuh"
#include "gemv/gemv_formats_rows.cuh"

#include <algorithm>

namespace kernelswap {
namespace gemv {

constexpr int kSmemLimit = 48 * 1024;  // dynamic shared memory a block, no opt-in attribute needed

struct Plan {
  int splits, batches_per_split, smem;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Host side: the splits of K for n_blocks blocks of tiles over `batches` batches at M rows
// (mp = 8 * NT): enough blocks to keep every SM streaming (F::kBlocksPerSm a SM), at
// least 2 batches a split, and no more batches a split than the format's shared memory allows.
// smem > kSmemLimit when even one batch a split does not fit.
// The split count is ceil(target / n_blocks), or the count below it where that is at least 2
// and leaves the last wave of blocks fuller: 112 blocks against a target of 264 take 2 splits
// (224 blocks, one wave 85% full), not 3 (336: a second wave 27% full). On an H200
// (benchmarks/gemv_lab.cu, 2026-12-02, 4096x14336, M = 1) that took the row-major W8A16 from
// 26.3 to 21.9 us, W8A8 from 27.0 to 22.7 and int4 g128 (224 blocks, target 528) from 15.8 to
// 14.9 us. Never down to 1 split: the large layers' 2 (224 int8 blocks, 448 int4 ones) is what
// the block-shape sweep measured, and 1 was not.
inline int64_t splits_for_waves(int64_t target, int64_t n_blocks) {
  const int64_t lo = target / n_blocks, hi = ceil_div(target, n_blocks);
  auto fullness = [&](int64_t s) {  // blocks in the last wave
    const int64_t r = (s * n_blocks) % target;
    return r == 0 ? target : r;
  };
  return lo >= 2 && fullness(lo) > fullness(hi) ? lo : hi;
}

template <class F>
Plan plan_splits(int64_t n_blocks, int64_t batches, int m, int mp, int sms) {
  const int64_t target = int64_t(F::kBlocksPerSm) * sms;
  int64_t s = std::max<int64_t>(1, std::min(splits_for_waves(target, n_blocks), batches / 2));
  int64_t per = ceil_div(batches, s);
  while (per > 1 && F::smem_bytes(static_cast<int>(per * kBatchK), m, mp) > kSmemLimit) per = ceil_div(per, 2);
  const int64_t splits = ceil_div(batches, per);
  return Plan{static_cast<int>(splits), static_cast<int>(per), F::smem_bytes(static_cast<int>(per * kBatchK), m, mp)};
}

// fn(nt, i, m, n) for each accumulator acc[nt][i] of this lane whose output (m, n) exists
// (C fragment: token m = 8 nt + 2 t + i % 2, row n = n0 + 8 (i / 2)).
template <int NT, class Fn>
__device__ __forceinline__ void for_outputs(const Args& a, int n0, int t, Fn&& fn) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = nt * 8 + 2 * t + (i & 1), n = n0 + 8 * (i >> 1);
      if (m < a.M && n < a.N) fn(nt, i, m, n);
    }
}

// Programmatic dependent launch (sm_90+; no-ops where the launch did not ask for it, and compiled
// out below sm_90): launch_dependents lets the next kernel of the stream, when launched with PDL,
// start before this one ends; wait holds this one until the kernel before it has finished and its
// writes are visible. The kernel reads only its prepared weights and their scales before the wait:
// those are written when the layer is prepared, kernels before any GEMV on them (the last kernel of
// a prepare is the counters' fill, after the weights'); x, the workspace, the counters and out
// come after it.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

template <class Act, class F, int NT>
__global__ void __launch_bounds__(F::kWarps * 32) gemv_kernel(const Args a) {
  using Acc = typename F::Acc;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int last_block;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tile = blockIdx.x * F::kWarps + warp;
  const int b0 = blockIdx.y * a.batches_per_split;
  const int b1 = min(b0 + a.batches_per_split, a.batches);
  const bool streams = tile < a.n_tiles && b0 < b1;

  // The first batch's weights are in flight before the wait (see pdl_wait) and while x is staged.
  const uint64_t policy = evict_first_policy();
  typename F::Stream stream(a, streams ? tile : 0, streams ? b0 : 0, lane);
  static_assert(F::Stream::kLoads == F::kLoads, "a format's stream loads its kLoads");
  uint4 next[F::kLoads];
  typename F::Aux aux_next;
  if (streams) {
    stream.load(policy, next);
    F::load_aux(a, tile, b0, g, aux_next);
  }
  pdl_wait();
  pdl_launch_dependents();  // the next GEMV may start streaming its own first batch (see F::kPdl)
  typename F::Block blk;
  F::template setup<NT>(a, b0, b1, smem, blk);

  Acc acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = Acc(0);

  if (streams) {
    for (int b = b0; b < b1; ++b) {
      uint4 cur[F::kLoads];
#pragma unroll
      for (int u = 0; u < F::kLoads; ++u) cur[u] = next[u];
      const typename F::Aux aux = aux_next;
      if (b + 1 < b1) {
        stream.next();
        stream.load(policy, next);
        F::load_aux(a, tile, b + 1, g, aux_next);
      }
      F::template batch<NT>(a, blk, b, g, t, cur, aux, acc);
    }
  }

  const bool rows = tile < a.n_tiles;
  const int n0 = tile * kTileN + g;
  if (gridDim.y > 1) {
    Acc* ws = static_cast<Acc*>(a.ws);
    if (rows) {
      for_outputs<NT>(a, n0, t, [&](int nt, int i, int m, int n) {
        ws[(static_cast<int64_t>(blockIdx.y) * a.M + m) * a.N + n] = acc[nt][i];
      });
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      const int arrived = atomicAdd(a.counters + blockIdx.x, 1);
      last_block = arrived == static_cast<int>(gridDim.y) - 1;
      if (last_block) a.counters[blockIdx.x] = 0;  // every split of this column has arrived
    }
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    if (rows) {
      for_outputs<NT>(a, n0, t, [&](int nt, int i, int m, int n) {
        Acc sum = Acc(0);
        for (int s = 0; s < static_cast<int>(gridDim.y); ++s)
          sum += s == static_cast<int>(blockIdx.y) ? acc[nt][i]
                                                   : __ldcg(ws + (static_cast<int64_t>(s) * a.M + m) * a.N + n);
        acc[nt][i] = sum;
      });
    }
  }
  if (!rows) return;
  auto* out = static_cast<typename Act::T*>(a.out);
  for_outputs<NT>(a, n0, t, [&](int nt, int i, int m, int n) {
    out[static_cast<int64_t>(m) * a.N + n] = Act::cast(F::epilogue(a, blk, acc[nt][i], m, n));
  });
}

}  // namespace gemv
}  // namespace kernelswap
