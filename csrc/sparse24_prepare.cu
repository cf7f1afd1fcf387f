// _C_sparse24_prepare: a dense 2:4-sparse weight -> CUTLASS's sm_90a sparse layouts.
//
// The public format (python/kernelswap/ops/sparse24.py: values + one nibble of two 2-bit
// indices per group of 4) holds the same information as CUTLASS's, but the Hopper
// sparse wgmma wants the metadata interleaved across 64-row blocks (TensorEAtom in
// cutlass/gemm/collective/builders/sm90_sparse_config.inl), padded to 64 rows and to
// 128 columns of K. Rather than re-derive that layout, the Python side decompresses to
// dense on the GPU once and this op runs CUTLASS's own compressor, so the layout is
// right by construction. ops/cuda_ext.py caches the result per weight buffer.
//
//   w       (N, K)  bf16 / fp16 / int8, contiguous, exactly 2:4 sparse along K
//   values  (N, K_a / 2)  w's type: the kept values, K_a = K rounded up for TMA
//   meta    (ME, KE)      uint8: CUTLASS's metadata layout, ME = N rounded up to 64
// The GEMMs in csrc/sm90 read these as they are; they are opaque to everyone else.
#include "common.h"

#include "sm90/gemm_problem.h"

#include <torch/csrc/stable/accelerator.h>

#include <tuple>

#if KERNELSWAP_WITH_CUTLASS
#include "sm90/gemm_sm90.cuh"

#include <cutlass/transform/device/transform_universal_adapter.hpp>
#include <cutlass/transform/kernel/sparse_gemm_compressor.hpp>
#endif

namespace kernelswap {
namespace {

constexpr const char* kOp = "_C_sparse24_prepare";

#if KERNELSWAP_WITH_CUTLASS
template <sm90::DType In>
struct Compressor {
  // The output type does not change the mainloop, hence not the sparse layouts.
  static constexpr sm90::DType kOut = In == sm90::DType::kI8 ? sm90::DType::kBF16 : In;
  using Mainloop = typename sm90::Gemm<true, In, kOut, sm90::Tiles::kLarge>::CollectiveMainloop;
  using SparseConfig = typename Mainloop::SparseConfig;
  static_assert(std::is_same_v<SparseConfig, typename sm90::Gemm<true, In, kOut, sm90::Tiles::kSmall>::
                                                 CollectiveMainloop::SparseConfig>,
                "every sparse tile config must share one metadata layout (K tile >= 128)");
  using Problem = cute::Shape<int, int, int, int>;
  using Element = typename sm90::CutlassType<In>::type;
  using Utility = cutlass::transform::kernel::StructuredSparseCompressorUtility<
      Problem, Element, cutlass::layout::RowMajor, SparseConfig>;
  using Kernel = cutlass::transform::kernel::StructuredSparseCompressor<
      Problem, Element, cutlass::layout::RowMajor, SparseConfig, cutlass::arch::Sm90>;
  using Device = cutlass::transform::device::TransformUniversalAdapter<Kernel>;

  static std::tuple<Tensor, Tensor> run(const Tensor& w) {
    const int N = static_cast<int>(w.size(0)), K = static_cast<int>(w.size(1));
    Problem problem{N, 1, K, 1};
    const cute::Stride<int64_t, cute::_1, int64_t> stride_w{int64_t(K), {}, int64_t(0)};
    Utility util(problem, stride_w);
    // Zero-filled: the padding rows/columns must read as zero weights with valid metadata.
    Tensor values = torch::stable::new_zeros(w, {util.get_tensorA_m_physical(), util.get_tensorA_k_physical()});
    Tensor meta = torch::stable::new_zeros(w, {util.get_metadata_m_physical(), util.get_metadata_k_physical()},
                                           ScalarType::Byte);
    if (!w.is_cuda() || N == 0) return {values, meta};  // Meta: shapes only.
    const int device = w.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(device);  // the compressor launches on the current device
    cutlass::KernelHardwareInfo hw{device, sm90::sm_count(device)};
    typename Device::Arguments args{problem, {w.const_data_ptr(), stride_w, values.mutable_data_ptr(),
                                              meta.mutable_data_ptr()}, hw};
    Device op;
    cutlass::Status st = op.can_implement(args);
    STD_TORCH_CHECK(st == cutlass::Status::kSuccess, kOp, ": CUTLASS compressor cannot run N=", N, " K=", K,
                    ": ", cutlassGetStatusString(st));
    const size_t ws_bytes = Device::get_workspace_size(args);
    Tensor ws = torch::stable::new_empty(w, {static_cast<int64_t>(ws_bytes > 0 ? ws_bytes : 1)}, ScalarType::Byte);
    st = op.run(args, ws.mutable_data_ptr(), current_stream(w));
    STD_TORCH_CHECK(st == cutlass::Status::kSuccess, kOp, ": compressor launch failed: ",
                    cutlassGetStatusString(st));
    KS_CHECK_LAUNCH();
    return {values, meta};
  }
};
#endif

}  // namespace

// CUDA and Meta share this: the checks, the output shapes, and (CUDA only) the work.
std::tuple<Tensor, Tensor> sparse24_prepare(const Tensor& w) {
  STD_TORCH_CHECK(w.dim() == 2, kOp, ": w must be 2-D (N, K), got ", w.dim(), "-D");
  STD_TORCH_CHECK(w.is_contiguous(), kOp, ": w must be contiguous");
  const ScalarType dt = w.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::BFloat16 || dt == ScalarType::Half || dt == ScalarType::Char, kOp,
                  ": w must be bfloat16, float16 or int8");
  STD_TORCH_CHECK(w.size(0) % 16 == 0 && w.size(1) % 16 == 0, kOp, ": N and K must be multiples of 16 "
                  "(TMA needs 16-byte aligned rows), got N=", w.size(0), " K=", w.size(1));
  STD_TORCH_CHECK(dt != ScalarType::Char || w.size(1) % 32 == 0, kOp, ": int8 weights need K to be a multiple "
                  "of 32 (the GEMM reads 16-byte rows of K/2 compressed values), got K=", w.size(1));
  STD_TORCH_CHECK(w.size(0) < (1LL << 31) && w.size(1) < (1LL << 31), kOp, ": N and K must fit in int32");
#if KERNELSWAP_WITH_CUTLASS
  if (dt == ScalarType::BFloat16) return Compressor<sm90::DType::kBF16>::run(w);
  if (dt == ScalarType::Half) return Compressor<sm90::DType::kFP16>::run(w);
  return Compressor<sm90::DType::kI8>::run(w);
#else
  STD_TORCH_CHECK(false, kOp, ": kernelswap._C was built without CUTLASS (pip install nvidia-cutlass, then "
                  "rebuild); the 2:4 sparse GEMMs are not in this build");
  return {w, w};
#endif
}

}  // namespace kernelswap

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_sparse24_prepare", TORCH_BOX(&kernelswap::sparse24_prepare));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_sparse24_prepare", TORCH_BOX(&kernelswap::sparse24_prepare));
}
