// The CUTLASS 2.x Ampere 2:4 sparse GEMM (mma.sp) behind the sm_80 / sm_86 / sm_89 kernels
// of kernelswap._C, with the fused epilogue of the sm_90a ones (csrc/sm90/gemm_sm90.cuh).
// Included only by the generated csrc/sm80/inst_*.cu files.
//
// Orientation (csrc/gemm_args.h): the 2:4 weight is A (N x K, only A may be sparse), the
// tokens are B (K x M, i.e. x (M, K) row-major). Unlike the Hopper kernels this one writes
// D (N, M_pad) ROW-major: CUTLASS 2.x's epilogue stores vectors along GEMM columns, so a
// column-major D would be written one element at a time. The entry point
// (csrc/sm80_sparse_ops.cu) transposes D into out (M, N).
//
// Layouts the kernel reads (made by kernelswap.ops.sparse24_sm80 at swap time):
//   values  (N_pad, K_pad / 2)  the kept values, row-major
//   meta    CUTLASS's ColumnMajorInterleaved<2> E operand: for each row the 4-bit group
//           codes packed into uint16 (16-bit types) or uint32 (int8) words, rows shuffled
//           for ldmatrix (cutlass/util/host_reorder.h: reorder_meta).
//   x       (M_pad, K_pad), M_pad a multiple of 8 (16-bit) / 16 (int8), K_pad of the K tile.
// The padding is the caller's: CUTLASS 2.x checks N, M and K/2 against its vector widths,
// and its epilogue guards whole vectors, not elements.
#pragma once

#include "cutlass_common.cuh"

#include <cutlass/cutlass.h>
// In this order: visitors.hpp leans on what the GEMM header includes.
#include <cutlass/gemm/device/gemm_sparse_with_visitor.h>
#include <cutlass/epilogue/threadblock/fusion/visitors.hpp>

#include <type_traits>

namespace kernelswap::sm80 {

using namespace cute;

// Tiles, from the shapes CUTLASS's Ampere sparse unit tests cover: kSmall (M <= kSmallM
// tokens) keeps 128-row weight tiles but a 64-wide token tile; kLarge is 128x128.
// The K tile is 64 for 16-bit inputs, 128 for int8 (one mma.sp k32 / k64 step per warp pair).
template <DType In, Tiles T> struct Config {
  static constexpr bool kInt8 = In == DType::kI8;
  static constexpr int kK = kInt8 ? 128 : 64;
  static constexpr int kN = T == Tiles::kSmall ? 64 : 128;
  using Threadblock = cutlass::gemm::GemmShape<128, kN, kK>;
  using Warp = cutlass::gemm::GemmShape<64, kN / 2, kK>;
  using Instruction = cutlass::gemm::GemmShape<16, 8, kInt8 ? 64 : 32>;
  static constexpr int kStages = 3;
};

template <DType In, DType Out, Tiles T>
struct Gemm {
  using Cfg = Config<In, T>;
  using ElementIn = typename CutlassType<In>::type;
  using ElementOut = typename CutlassType<Out>::type;
  static constexpr bool kInt8 = In == DType::kI8;
  using Acc = std::conditional_t<kInt8, int32_t, float>;
  static constexpr int kAlignIn = 128 / cutlass::sizeof_bits<ElementIn>::value;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
  static constexpr auto kRN = cutlass::FloatRoundStyle::round_to_nearest;

  // One thread map for every visitor: the epilogue hands each the same fragments.
  using ThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<
      typename Cfg::Threadblock, typename Cfg::Warp, ElementOut, kAlignOut, 1>;
  // GEMM rows are out features (N), GEMM columns are tokens (M): a per-feature vector is a
  // column broadcast, a per-token vector a row broadcast. A null pointer reads as 0.
  using PerFeature = cutlass::epilogue::threadblock::VisitorColBroadcast<ThreadMap, float, Stride<_1, _0, _0>>;
  using PerToken = cutlass::epilogue::threadblock::VisitorRowBroadcast<ThreadMap, float, Stride<_0, _1, _0>>;
  using AccFetch = cutlass::epilogue::threadblock::VisitorAccFetch;
  template <template <class> class Fn>
  using Compute = cutlass::epilogue::threadblock::VisitorCompute<Fn, float, float, kRN>;
  template <class... Ts> using EVT = cutlass::epilogue::threadblock::Sm80EVT<Ts...>;

  // float inputs: acc + bias[n]; int8: (acc * x_scale[m]) * w_scale[n] + bias[n]
  using Value = std::conditional_t<
      kInt8,
      EVT<Compute<AddRn>, EVT<Compute<MulRn>, EVT<Compute<MulRn>, AccFetch, PerToken>, PerFeature>, PerFeature>,
      EVT<Compute<AddRn>, AccFetch, PerFeature>>;
  using Store = cutlass::epilogue::threadblock::VisitorAuxStore<ThreadMap, ElementOut, kRN,
                                                                Stride<int64_t, _1, int64_t>>;
  using Epilogue = EVT<Store, Value>;

  using Device = cutlass::gemm::device::SparseGemmWithVisitor<
      ElementIn, cutlass::layout::RowMajor,     // weight values (N, K / 2), K contiguous
      ElementIn, cutlass::layout::ColumnMajor,  // tokens (M, K), K contiguous
      ElementOut, cutlass::layout::RowMajor, Acc, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      typename Cfg::Threadblock, typename Cfg::Warp, typename Cfg::Instruction, Epilogue,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<4>, Cfg::kStages, kAlignIn, kAlignIn,
      std::conditional_t<kInt8, cutlass::arch::OpMultiplyAddSaturate, cutlass::arch::OpMultiplyAdd>, 1>;
  using ElementE = typename Device::ElementE;
  using LayoutE = typename Device::LayoutE;
};

template <DType In, DType Out, Tiles T>
void run_sparse_gemm(const GemmProblem& p) {
  using G = Gemm<In, Out, T>;
  using Device = typename G::Device;
  using ElementIn = typename G::ElementIn;
  using ElementE = typename G::ElementE;
  constexpr int kMetaCols = 2 * Device::kElementsPerElementE;  // logical K per E element

  typename G::Value::Arguments value;
  if constexpr (G::kInt8) {
    value = {{{{}, {p.x_scale}, {}}, {p.w_scale}, {}}, {p.bias}, {}};
  } else {
    value = {{}, {p.bias}, {}};
  }
  typename G::Store::Arguments store{static_cast<typename G::ElementOut*>(p.out),
                                     {int64_t(p.M), _1{}, int64_t(p.M) * p.N}};
  typename G::Epilogue::Arguments epilogue{value, store};

  cutlass::gemm::GemmCoord problem(p.N, p.M, p.K);
  typename Device::Arguments args{
      problem,
      {static_cast<const ElementIn*>(p.w), typename cutlass::layout::RowMajor(p.K / 2)},
      {static_cast<const ElementIn*>(p.x), typename cutlass::layout::ColumnMajor(p.K)},
      {static_cast<ElementE*>(const_cast<void*>(p.meta)),
       G::LayoutE::packed(cutlass::make_Coord(p.N, p.K / kMetaCols))},
      epilogue};

  run_cutlass<Device>("sm80 2:4 GEMM", args, p);
}

}  // namespace kernelswap::sm80
