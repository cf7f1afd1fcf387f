// Argument checks (and the optional-pointer helper) shared by the GEMM entry points (csrc/sm90_gemm_ops.cu,
// csrc/sm80_sparse_ops.cu), for their CUDA and Meta implementations alike.
#pragma once

#include "common.h"
#include "gemm_args.h"

#include <torch/csrc/stable/ops.h>

#include <cstdint>
#include <optional>

namespace kernelswap {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// 2-D / 1-D, of dtype `dt`, contiguous, 16-byte aligned (TMA and vector loads both need it).
inline void check_tensor(const char* op, const char* name, const Tensor& t, ScalarType dt, const char* dt_name,
                         int64_t dim) {
  STD_TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got ", t.dim(), "-D");
  STD_TORCH_CHECK(t.scalar_type() == dt, op, ": ", name, " must be ", dt_name);
  STD_TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  STD_TORCH_CHECK(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0, op, ": ", name,
                  " must be 16-byte aligned (TMA / vector loads); pass a fresh tensor, not an offset view");
}

// The sm_90a GEMMs' K and N: TMA moves 16-byte rows of x and w (K) and of out (N).
inline void check_kn(const char* op, int64_t K, int64_t N) {
  STD_TORCH_CHECK(K % 16 == 0 && K > 0, op, ": K must be a positive multiple of 16 (TMA moves 16-byte rows), got K=", K);
  STD_TORCH_CHECK(N % 16 == 0 && N > 0, op, ": N must be a positive multiple of 16 (TMA stores 16-byte rows), got N=", N);
  STD_TORCH_CHECK(K < (1LL << 31) && N < (1LL << 31), op, ": K and N must be below 2^31");
}

// An fp32 vector of n elements (scales, bias).
inline void check_vector(const char* op, const char* name, const Tensor& t, int64_t n) {
  check_tensor(op, name, t, ScalarType::Float, "float32", 1);
  STD_TORCH_CHECK(t.size(0) == n, op, ": ", name, " must have ", n, " elements, got ", t.size(0));
}

// The output element type of the int8 GEMMs: bf16 or fp16.
inline DType out_type(const char* op, ScalarType dt) {
  STD_TORCH_CHECK(dt == ScalarType::BFloat16 || dt == ScalarType::Half, op,
                  ": out_dtype must be bfloat16 or float16 (float32 output is not instantiated)");
  return dt == ScalarType::BFloat16 ? DType::kBF16 : DType::kFP16;
}

// The op entry points' GEMM workspace: torch's allocator on `like`'s device, held until the op returns.
struct TorchWorkspace {
  const Tensor* like;
  std::optional<Tensor> held;

  static void* alloc(void* self, size_t bytes) {
    auto* w = static_cast<TorchWorkspace*>(self);
    w->held = torch::stable::new_empty(*w->like, {static_cast<int64_t>(bytes > 0 ? bytes : 1)}, ScalarType::Byte);
    return w->held->mutable_data_ptr();
  }
  Workspace get() { return {&TorchWorkspace::alloc, this}; }
};

// An optional fp32 vector's data, or null.
inline const float* opt_ptr(const std::optional<Tensor>& t) {
  return t.has_value() ? static_cast<const float*>(t->const_data_ptr()) : nullptr;
}
inline const float* opt_ptr(const Tensor* t) { return t ? static_cast<const float*>(t->const_data_ptr()) : nullptr; }

}  // namespace kernelswap
