// Entry points of the sm_90a mixed-input GEMMs (csrc/sm90/gemm_mixed_sm90.cuh), the weight-only
// layers' large-M path:
//
//   _C_int8_weight_mm(x, w, w_scale, bias)
//       x (M, K) bf16, w (N, K) int8, w_scale (N,) fp32, bias (N,) fp32 or None
//       -> (M, N) x.dtype = (x @ w.T) * w_scale[n] + bias[n]
//   _C_int4_mm(x, w_packed, scale, zero, bias, group_size)
//       x (M, K) bf16, w_packed (N, K / 2) uint8 (kernelswap.ops.int4's codes, even k in the
//       low nibble), scale and zero (K / group_size, N) fp32 with w = code * scale + zero
//       (kernelswap.ops.mixed_cuda.mixed_scales makes them), group_size 64 or 128
//       -> (M, N) x.dtype = x @ w.T + bias[n]
//
// Limits, each with its own error: bf16 x (the only type instantiated, csrc/generate.py); an sm_90
// GPU and a build with 9.0a; K and N multiples of 16
// (TMA rows), K a multiple of group_size (the mainloop's K tile, 64, must divide the group, so
// group 32 is refused); 16-byte aligned, contiguous inputs; M, N, K < 2^31.
#include "common.h"

#include "op_checks.h"
#include "sm90/gemm_mixed.h"
#include "sm90/gemm_plan.h"

#include <torch/csrc/stable/accelerator.h>

#include <cstring>
#include <memory>
#include <optional>

namespace kernelswap {
namespace {

using sm90::DType;

constexpr GpuNeed kSm90a{"the sm_90a GEMMs", "9.0a", 90, 90, "an sm_90 (Hopper) GPU"};
constexpr int64_t kTileK = 64;  // sm90::MixedConfig's K tile

// x: bf16, (M, K); returns its DType, after the K / N / bias checks.
DType check_x(const char* op, const Tensor& x, int64_t N, const std::optional<Tensor>& bias) {
  const ScalarType dt = x.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::BFloat16, op, ": x must be bfloat16 (the only type instantiated; float16 "
                  "layers take the Triton GEMMs)");
  check_tensor(op, "x", x, dt, "bfloat16", 2);
  const int64_t M = x.size(0), K = x.size(1);
  check_kn(op, K, N);
  STD_TORCH_CHECK(M < (1LL << 31), op, ": M must be below 2^31");
  if (bias.has_value()) check_vector(op, "bias", *bias, N);
  return DType::kBF16;
}

// bf16 out (checked before); the 256-token tile from sm90::kMixedLargeFromM tokens on.
template <DType W>
void launch(DType, sm90::GemmProblem& p) {
#if KERNELSWAP_WITH_CUTLASS  // else check_device has already refused
  p.M >= sm90::kMixedLargeFromM ? sm90::run_mixed_gemm<W, DType::kBF16, sm90::Tiles::kLarge>(p)
                                : sm90::run_mixed_gemm<W, DType::kBF16, sm90::Tiles::kSmall>(p);
#endif
}

// The output, and on a CUDA tensor with rows to compute the launch (Meta tensors and M = 0 stop at the output).
template <DType W>
Tensor run(const char* op, const Tensor& x, DType out, sm90::GemmProblem p) {
  Tensor y = torch::stable::new_empty(x, {x.size(0), p.N});
  if (!x.is_cuda() || x.size(0) == 0) return y;
  check_device(op, x, kSm90a);
  TorchWorkspace ws{&x, std::nullopt};
  p.x = x.const_data_ptr();
  p.out = y.mutable_data_ptr();
  p.M = int(x.size(0));
  p.K = int(x.size(1));
  p.device = x.get_device_index();
  p.stream = current_stream(x);
  p.workspace = ws.get();
  torch::stable::accelerator::DeviceGuard guard(p.device);  // CUTLASS launches on the current device
  launch<W>(out, p);
  return y;
}

}  // namespace

Tensor int8_weight_mm(const Tensor& x, const Tensor& w, const Tensor& w_scale, const std::optional<Tensor>& bias) {
  constexpr const char* op = "_C_int8_weight_mm";
  check_tensor(op, "w", w, ScalarType::Char, "int8", 2);
  const int64_t N = w.size(0);
  const DType out = check_x(op, x, N, bias);
  STD_TORCH_CHECK(w.size(1) == x.size(1), op, ": x is (M, K=", x.size(1), ") but w is (N, K=", w.size(1), ")");
  check_vector(op, "w_scale", w_scale, N);
  sm90::GemmProblem p{};
  p.w = w.const_data_ptr();
  p.w_scale = static_cast<const float*>(w_scale.const_data_ptr());
  p.bias = opt_ptr(bias);
  p.N = int(N);
  return run<DType::kI8>(op, x, out, p);
}

Tensor int4_mm(const Tensor& x, const Tensor& w_packed, const Tensor& scale, const Tensor& zero,
               const std::optional<Tensor>& bias, int64_t group_size) {
  constexpr const char* op = "_C_int4_mm";
  check_tensor(op, "w_packed", w_packed, ScalarType::Byte, "uint8", 2);
  const int64_t N = w_packed.size(0), K = x.size(-1);
  const DType out = check_x(op, x, N, bias);
  STD_TORCH_CHECK(group_size == 64 || group_size == 128, op, ": group_size must be 64 or 128 (the K tile of ", kTileK,
                  " must divide it), got ", group_size);
  STD_TORCH_CHECK(K % group_size == 0, op, ": K=", K, " must be a multiple of group_size=", group_size);
  STD_TORCH_CHECK(w_packed.size(1) * 2 == K, op, ": x is (M, K=", K, ") but w_packed holds ", w_packed.size(1) * 2,
                  " codes a row (pad x to the weight's K)");
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"scale", &scale}, {"zero", &zero}}) {
    check_tensor(op, name, *t, ScalarType::Float, "float32", 2);
    STD_TORCH_CHECK(t->size(0) == K / group_size && t->size(1) == N, op, ": ", name, " must be (K / group_size, N) = (",
                    K / group_size, ", ", N, "), got (", t->size(0), ", ", t->size(1),
                    "); make it with kernelswap.ops.mixed_cuda.mixed_scales");
  }
  sm90::GemmProblem p{};
  p.w = w_packed.const_data_ptr();
  p.bias = opt_ptr(bias);
  p.N = int(N);
  p.group_scale = scale.const_data_ptr();
  p.group_zero = zero.const_data_ptr();
  p.group_size = int(group_size);
  return run<DType::kU4>(op, x, out, p);
}

}  // namespace kernelswap

extern "C" {

// The raw plan (csrc/raw_entry.h) of one weight-only layer's mixed-input GEMM at M tokens, run by
// kernelswap_gemm_run: kind 0 int4 (w the packed codes, scale / zero (K / group_size, N) fp32),
// kind 1 int8 (w (N, K) int8, w_scale (N,) fp32); bf16 x and out (bf16 = 1; 0, fp16, is refused); bias
// fp32 or null.
// The checks of the op entry points, without throwing; null on an error (kernelswap_raw_error()).
void* kernelswap_mixed_plan(int kind, int bf16, const void* w, const void* scale, const void* zero,
                            const void* w_scale, const void* bias, int64_t group_size, int64_t M, int64_t N,
                            int64_t K, int device, int64_t* scratch_bytes) {
  using namespace kernelswap;
  const char* op = "kernelswap_mixed_plan";
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  const bool int4 = kind == 0;
  const bool ok =
      ((kind == 0 || kind == 1) || raw::fail(op, ": unknown kind ", kind)) &&
      (bf16 || raw::fail(op, ": the mixed-input GEMMs take bfloat16 x only")) &&
      ((M >= 1 && M < (1LL << 31)) || raw::fail(op, ": M=", M, " must be in 1..2^31")) &&
      ((K > 0 && K % 16 == 0 && K < (1LL << 31)) || raw::fail(op, ": K must be a positive multiple of 16, got ", K)) &&
      ((N > 0 && N % 16 == 0 && N < (1LL << 31)) || raw::fail(op, ": N must be a positive multiple of 16, got ", N)) &&
      (!int4 || group_size == 64 || group_size == 128 || raw::fail(op, ": group_size must be 64 or 128, got ", group_size)) &&
      (!int4 || K % group_size == 0 || raw::fail(op, ": K=", K, " must be a multiple of group_size=", group_size)) &&
      (KERNELSWAP_WITH_CUTLASS || raw::fail(op, ": kernelswap._C was built without CUTLASS")) &&
      (std::strstr(KERNELSWAP_ARCHS, "9.0a") != nullptr || raw::fail(op, ": kernelswap._C was built without 9.0a")) &&
      ((major == 9 && minor == 0) || raw::fail(op, ": needs an sm_90 (Hopper) GPU; device ", device, " is sm_", major,
                                               minor));
  if (!ok) return nullptr;
  sm90::GemmPlan* plan = nullptr;
  raw::guarded([&] {
    auto g = std::make_unique<sm90::GemmPlan>();
    g->device = device;
    g->out = DType::kBF16;
    g->x_dtype = ScalarType::BFloat16;
    g->launch = int4 ? &launch<DType::kU4> : &launch<DType::kI8>;
    sm90::GemmProblem& p = g->p;
    p.w = w;
    p.w_scale = static_cast<const float*>(w_scale);
    p.bias = static_cast<const float*>(bias);
    p.M = int(M);
    p.N = int(N);
    p.K = int(K);
    p.device = device;
    if (int4) {
      p.group_scale = scale;
      p.group_zero = zero;
      p.group_size = int(group_size);
    }
    *scratch_bytes = g->size_scratch();
    plan = g.release();
    return 0;
  });
  return plan;
}

}  // extern "C"

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_int8_weight_mm", TORCH_BOX(&kernelswap::int8_weight_mm));
  m.impl("_C_int4_mm", TORCH_BOX(&kernelswap::int4_mm));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_int8_weight_mm", TORCH_BOX(&kernelswap::int8_weight_mm));
  m.impl("_C_int4_mm", TORCH_BOX(&kernelswap::int4_mm));
}
