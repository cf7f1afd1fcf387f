// The CUTLASS 3.x Hopper mixed-input GEMM behind the weight-only layers at large M (W8A16, W4A16):
// the int8 / int4 weight is converted to x's type in registers inside the mainloop (the RS wgmma
// takes its A operand from registers) and never written back as a 16-bit copy, which the
// "dequantize, then cuBLAS" route pays a full pass over the weights for. Included only by the
// generated csrc/sm90/inst_mixed_*.cu files (one per weight type). Same swapped orientation as
// csrc/sm90/gemm_sm90.cuh (weight = A, tokens = B; csrc/gemm_args.h): the mixed-input mainloop
// wants the narrow operand as A anyway.
//
//   W8A16 (W = kI8):  out = (x @ w_q.T) * w_scale[n] + bias[n]. int8 -> bf16 is exact, so the
//                     products are exact and only the fp32 sums' order differs from the reference.
//   W4A16 (W = kU4):  out = x @ w.T + bias[n], w = code * scale + zero in fp32 per group along K
//                     (scale and zero (K / g, N) fp32, zero = -z * s, made by ops/mixed_cuda.py),
//                     then rounded once to x's type: the same value as the reference's dequantized
//                     weight cast to x's type, bit for bit (each step is exact in fp32).
#pragma once

#include "sm90/gemm_mixed.h"
#include "sm90/gemm_sm90.cuh"

namespace kernelswap::sm90 {

template <DType W> struct MixedWeight;
template <> struct MixedWeight<DType::kI8> {
  using type = int8_t;
  using Mainloop = int8_t;  // DirectConvert: no scale in the mainloop (per channel: the epilogue)
};
template <> struct MixedWeight<DType::kU4> {
  using type = cutlass::uint4b_t;
  using Mainloop = cute::tuple<cutlass::uint4b_t, float, float>;  // ConvertAndScaleWithZero
};

// W8A16: D = (acc * w_scale[n]) + bias[n], fp32, each step rounded (no contraction).
template <class Tile, class Out>
using EpilogueChannelScaled = fusion::Sm90EVT<
    fusion::Sm90Compute<AddRn, Out, float, kRN>,
    fusion::Sm90EVT<fusion::Sm90Compute<MulRn, float, float, kRN>, fusion::Sm90AccFetch, PerFeature<Tile>>,
    PerFeature<Tile>>;

// 128 weight rows (two consumer warp groups of 64) x 128 (kSmall) or 256 (kLarge) tokens x 64 K,
// cooperative, no cluster: CUTLASS's 55_hopper_mixed_dtype_gemm shape (K tile = 128 bytes of 16-bit
// B), and the same with twice the tokens, over which each converted weight fragment is used (H200,
// benchmarks/never_slower.py, time over bf16's at 4096x14336 / 8192x28672: W8A16 M = 128 0.82 / 0.87
// with 128 tokens against 1.41 / 1.59 with 256; M = 512 1.26 / 1.20 against 1.00 / 1.00; M = 8192
// 1.40 / 1.48 against 0.99 / 1.17; W4A16 alike). The K tile must divide the group size (the mainloop
// loads one scale row per K tile): groups 64 and 128 are served, 32 is not.
template <Tiles T> struct MixedConfig {
  using Tile = Shape<_128, std::conditional_t<T == Tiles::kLarge, _256, _128>, _64>;
  using Cluster = Shape<_1, _1, _1>;
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epi = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

// The mixed-input GEMM for a tile config Cfg (as MixedConfig; benchmarks/gemm_lab.cu times others).
template <DType W, DType Out, class C>
struct MixedGemmOf {
  using Cfg = C;
  using Tile = typename Cfg::Tile;
  using ElementW = typename MixedWeight<W>::type;
  using ElementX = typename CutlassType<Out>::type;  // x and out share a type
  static constexpr bool kChannelScale = W == DType::kI8;
  static constexpr int kAlignW = 128 / cutlass::sizeof_bits<ElementW>::value;
  static constexpr int kAlignX = 128 / cutlass::sizeof_bits<ElementX>::value;
  using LayoutD = cutlass::layout::ColumnMajor;  // (N, M) column-major == out (M, N) row-major
  using Fusion = std::conditional_t<kChannelScale, EpilogueChannelScaled<Tile, ElementX>, EpilogueBias<Tile, ElementX>>;
  using OpClass = cutlass::arch::OpClassTensorOp;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, OpClass, Tile, typename Cfg::Cluster, cutlass::epilogue::collective::EpilogueTileAuto,
      float, float, void, LayoutD, kAlignX,  // no C operand
      ElementX, LayoutD, kAlignX, typename Cfg::Epi, Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, OpClass,
      typename MixedWeight<W>::Mainloop, cutlass::layout::RowMajor, kAlignW,  // weight (N, K), K contiguous
      ElementX, cutlass::layout::ColumnMajor, kAlignX,                        // tokens (M, K), K contiguous
      float, Tile, typename Cfg::Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Cfg::Kernel>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};
template <DType W, DType Out, Tiles T>
using MixedGemm = MixedGemmOf<W, Out, MixedConfig<T>>;

template <class G>
typename G::Device::Arguments mixed_arguments(const GemmProblem& p) {
  using ElementW = typename G::ElementW;
  using ElementX = typename G::ElementX;
  using StrideA = typename G::Kernel::StrideA;
  using StrideB = typename G::Kernel::StrideB;
  using StrideD = typename G::Kernel::StrideD;
  auto problem = make_tuple(p.N, p.M, p.K, 1);
  const StrideA stride_a = make_stride(int64_t(p.K), _1{}, int64_t(0));
  const StrideB stride_b = make_stride(int64_t(p.K), _1{}, int64_t(0));
  const StrideD stride_d = make_stride(_1{}, int64_t(p.N), int64_t(0));

  typename G::CollectiveMainloop::Arguments mainloop{};
  mainloop.ptr_A = static_cast<const ElementW*>(p.w);
  mainloop.dA = stride_a;
  mainloop.ptr_B = static_cast<const ElementX*>(p.x);
  mainloop.dB = stride_b;
  if constexpr (!G::kChannelScale) {
    // (K / g, N) fp32, N contiguous: the mainloop's MN-major scale layout.
    mainloop.ptr_S = static_cast<const float*>(p.group_scale);
    mainloop.dS = make_stride(_1{}, int64_t(p.N), int64_t(0));
    mainloop.group_size = p.group_size;
    mainloop.ptr_Z = static_cast<const float*>(p.group_zero);
  }

  typename G::CollectiveEpilogue::Arguments epilogue{{}, nullptr, stride_d, static_cast<ElementX*>(p.out), stride_d};
  if constexpr (G::kChannelScale) {
    epilogue.thread = {{{}, {p.w_scale}, {}}, {p.bias}, {}};
  } else {
    epilogue.thread = {{}, {p.bias}, {}};
  }
  cutlass::KernelHardwareInfo hw{p.device, sm_count(p.device)};
  return typename G::Device::Arguments{cutlass::gemm::GemmUniversalMode::kGemm, problem, mainloop, epilogue, hw};
}

// With a raw plan's cache (csrc/sm90/gemm_plan.h), the kernel parameters are kept between runs and
// only x's and out's addresses patched in (run_kept); otherwise CUTLASS is set up every call.
template <DType W, DType Out, Tiles T>
void run_mixed_gemm(const GemmProblem& p) {
  using G = MixedGemm<W, Out, T>;
  using Device = typename G::Device;
  if (p.cache != nullptr && p.query == nullptr) {
    run_kept<Device>(p, false, [&] { return mixed_arguments<G>(p); });
  } else {
    run_cutlass<Device>("sm90 mixed-input GEMM", mixed_arguments<G>(p), p);
  }
}

}  // namespace kernelswap::sm90
