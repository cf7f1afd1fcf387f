// Entry points of the sm_80+ (mma.sp) CUTLASS 2:4 GEMMs (csrc/sm80): argument checks
// (shared by the CUDA and Meta implementations), padding, the choice of instantiation, and
// the transpose of the GEMM's (N, M) result into out (M, N).
//
//   _C_sparse24_mm_sm80(x, values, meta, bias)
//       x (M, K) bf16 / fp16, values (N, K_pad / 2) x.dtype and meta (N, K_pad / 8) uint8 in
//       CUTLASS's Ampere layout (kernelswap.ops.sparse24_sm80.prepare), bias (N,) fp32 or None
//       -> (M, N) x.dtype = x @ w.T + bias
//   _C_sparse24_int8_mm_sm80(x, x_scale, values, meta, w_scale, bias, out_dtype)
//       x (M, K) int8, x_scale (M,) fp32, w_scale (N,) fp32 -> (M, N) out_dtype (bf16 / fp16)
//       = (x @ w.T * x_scale[m]) * w_scale[n] + bias[n]
//
// Limits, each with its own error: a GPU of sm_80 or later and a build with CUTLASS;
// N a multiple of 32 (16-bit) / 16 (int8), the row groups of the metadata layout; K <= K_pad,
// K_pad a multiple of the K tile (64 / 128); contiguous, 16-byte aligned inputs.
// x is copied into a zero-padded buffer when M is not a multiple of 8 (16-bit) / 16 (int8)
// or K < K_pad: CUTLASS 2.x checks M and K against its vector widths.
#include "common.h"

#include "op_checks.h"
#include "sm80/sparse_gemm.h"

#include <torch/csrc/stable/accelerator.h>

#include <optional>

namespace kernelswap {
namespace {

// The layout of kernelswap.ops.sparse24_sm80.prepare; returns K_pad.
int64_t check_sparse(const char* op, const Tensor& x, const Tensor& values, const Tensor& meta, ScalarType dt,
                     const char* dt_name, bool int8) {
  check_tensor(op, "values", values, dt, dt_name, 2);
  check_tensor(op, "meta", meta, ScalarType::Byte, "uint8", 2);
  const int64_t N = values.size(0), K = x.size(1), k_pad = values.size(1) * 2;
  const int64_t rows = int8 ? 16 : 32, k_tile = int8 ? 128 : 64;
  STD_TORCH_CHECK(N % rows == 0 && N > 0, op, ": N must be a positive multiple of ", rows,
                  " (the metadata's row groups), got N=", N);
  STD_TORCH_CHECK(k_pad % k_tile == 0, op, ": values hold K_pad=", k_pad, ", not a multiple of the K tile ",
                  k_tile, ". Make values and meta with kernelswap.ops.sparse24_sm80.prepare");
  STD_TORCH_CHECK(K <= k_pad && K > 0, op, ": x has K=", K, " but values hold K_pad=", k_pad);
  STD_TORCH_CHECK(meta.size(0) == N && meta.size(1) * 8 == k_pad, op, ": meta is (", meta.size(0), ", ",
                  meta.size(1), "), expected (", N, ", ", k_pad / 8, "). Make values and meta with "
                  "kernelswap.ops.sparse24_sm80.prepare");
  STD_TORCH_CHECK(N < (1LL << 31) && k_pad < (1LL << 31) && x.size(0) < (1LL << 31), op,
                  ": M, N and K must be below 2^31");
  return k_pad;
}

// mma.sp exists from sm_80 on; these kernels also run on sm_90 (H100).
constexpr GpuNeed kMmaSp{"the 2:4 GEMMs", nullptr, 80, 1000, "an sm_80 or later GPU (mma.sp)"};

// src (rows, cols) -> a zero-filled (rows_pad, cols_pad) copy, or src itself when no padding is needed.
Tensor padded(Tensor src, int64_t rows_pad, int64_t cols_pad) {
  const int64_t rows = src.size(0), cols = src.dim() == 2 ? src.size(1) : 1;
  if (rows == rows_pad && cols == cols_pad) return src;
  Tensor out = src.dim() == 2 ? torch::stable::new_zeros(src, {rows_pad, cols_pad})
                              : torch::stable::new_zeros(src, {rows_pad});
  Tensor window = torch::stable::narrow(out, 0, 0, rows);
  if (src.dim() == 2) window = torch::stable::narrow(window, 1, 0, cols);
  torch::stable::copy_(window, src);
  return out;
}

template <DType In, DType Out>
void launch(const GemmProblem& p) {
#if KERNELSWAP_WITH_CUTLASS  // else check_device has already refused
  p.M <= kSmallM ? sm80::run_sparse_gemm<In, Out, Tiles::kSmall>(p) : sm80::run_sparse_gemm<In, Out, Tiles::kLarge>(p);
#endif
}

// The shared tail: pad x (and x_scale), run, transpose. x is int8 or x.dtype's.
template <DType In>
Tensor run(const char* op, const Tensor& x, const Tensor* x_scale, const Tensor& values, const Tensor& meta,
           const Tensor* w_scale, const std::optional<Tensor>& bias, ScalarType out_dtype, int64_t k_pad) {
  const int64_t M = x.size(0), N = values.size(0);
  if (!x.is_cuda() || M == 0) return torch::stable::new_empty(x, {M, N}, out_dtype);  // Meta: the shape
  check_device(op, x, kMmaSp);
  const int64_t m_pad = round_up(M, In == DType::kI8 ? 16 : 8);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());  // CUTLASS launches on the current device
  Tensor xp = padded(x, m_pad, k_pad);
  std::optional<Tensor> sp;
  if (x_scale) sp = padded(*x_scale, m_pad, 1);
  Tensor d = torch::stable::new_empty(x, {N, m_pad}, out_dtype);  // the GEMM's (N, M) row-major result
  TorchWorkspace ws{&x, std::nullopt};
  GemmProblem p{values.const_data_ptr(), meta.const_data_ptr(), xp.const_data_ptr(), opt_ptr(sp),
                opt_ptr(w_scale), opt_ptr(bias),
                d.mutable_data_ptr(), int(m_pad), int(N), int(k_pad), x.get_device_index(), current_stream(x),
                ws.get()};
  if constexpr (In != DType::kI8) {
    launch<In, In>(p);  // 16-bit inputs write their own type
  } else if (out_type(op, out_dtype) == DType::kBF16) {
    launch<In, DType::kBF16>(p);
  } else {
    launch<In, DType::kFP16>(p);
  }
  if (m_pad != M) d = torch::stable::narrow(d, 1, 0, M);
  return torch::stable::contiguous(torch::stable::transpose(d, 0, 1));
}

}  // namespace

Tensor sparse24_mm_sm80(const Tensor& x, const Tensor& values, const Tensor& meta, const std::optional<Tensor>& bias) {
  constexpr const char* op = "_C_sparse24_mm_sm80";
  const ScalarType dt = x.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::BFloat16 || dt == ScalarType::Half, op, ": x must be bfloat16 or float16");
  const char* dt_name = dt == ScalarType::BFloat16 ? "bfloat16 (like x)" : "float16 (like x)";
  check_tensor(op, "x", x, dt, dt_name, 2);
  const int64_t k_pad = check_sparse(op, x, values, meta, dt, dt_name, false);
  if (bias.has_value()) check_vector(op, "bias", *bias, values.size(0));
  return dt == ScalarType::BFloat16 ? run<DType::kBF16>(op, x, nullptr, values, meta, nullptr, bias, dt, k_pad)
                                    : run<DType::kFP16>(op, x, nullptr, values, meta, nullptr, bias, dt, k_pad);
}

Tensor sparse24_int8_mm_sm80(const Tensor& x, const Tensor& x_scale, const Tensor& values, const Tensor& meta,
                             const Tensor& w_scale, const std::optional<Tensor>& bias, ScalarType out_dtype) {
  constexpr const char* op = "_C_sparse24_int8_mm_sm80";
  check_tensor(op, "x", x, ScalarType::Char, "int8", 2);
  const int64_t k_pad = check_sparse(op, x, values, meta, ScalarType::Char, "int8", true);
  const int64_t N = values.size(0);
  check_vector(op, "x_scale", x_scale, x.size(0));
  check_vector(op, "w_scale", w_scale, N);
  if (bias.has_value()) check_vector(op, "bias", *bias, N);
  out_type(op, out_dtype);  // checked here, also for Meta tensors
  return run<DType::kI8>(op, x, &x_scale, values, meta, &w_scale, bias, out_dtype, k_pad);
}

}  // namespace kernelswap

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_sparse24_mm_sm80", TORCH_BOX(&kernelswap::sparse24_mm_sm80));
  m.impl("_C_sparse24_int8_mm_sm80", TORCH_BOX(&kernelswap::sparse24_int8_mm_sm80));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_sparse24_mm_sm80", TORCH_BOX(&kernelswap::sparse24_mm_sm80));
  m.impl("_C_sparse24_int8_mm_sm80", TORCH_BOX(&kernelswap::sparse24_int8_mm_sm80));
}
