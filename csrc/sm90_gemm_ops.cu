// Entry points of the sm_90a CUTLASS GEMMs: argument checks (shared by the CUDA and Meta
// implementations), the output, and the choice of instantiation (csrc/sm90/inst_*.cu).
//
//   _C_int8_mm(x, x_scale, w, w_scale, bias, out_dtype)
//       x (M, K) int8, x_scale (M,) fp32, w (N, K) int8, w_scale (N,) fp32, bias (N,) fp32 or None
//       -> (M, N) out_dtype (bf16 / fp16) = (x @ w.T * x_scale[m]) * w_scale[n] + bias[n]
//   _C_sparse24_mm(x, values, meta, bias)
//       x (M, K) bf16 / fp16, values + meta from _C_sparse24_prepare -> (M, N) x.dtype = x @ w.T + bias
//   _C_sparse24_int8_mm(x, x_scale, values, meta, w_scale, bias, out_dtype)
//       the int8 epilogue of _C_int8_mm over a 2:4 sparse int8 weight
//   _C_fp8_mm, _C_sparse24_fp8_mm: the same two with float8_e4m3fn x and w / values (fp32
//       accumulation, see csrc/sm90/gemm_sm90.cuh), out_dtype bfloat16 only; _C_fp8_mm's
//       fast_accum: at M > 64 (the kLarge tiles' M, see small_m), FP8 fast accumulation
//       (Tiles::kLargeFastAccum)
//
// Limits, each with its own error: an sm_90 GPU and a build with 9.0a; K and N multiples
// of 16 (TMA moves 16-byte aligned rows: K 8-bit / bf16 elements per row of x and w, N
// output elements per row of out), K a multiple of 32 for 8-bit 2:4 (its K / 2 compressed
// values per row); 16-byte aligned, contiguous inputs; M, N, K < 2^31.
#include "common.h"

#include "op_checks.h"
#include "quantize.h"
#include "raw_entry.h"
#include "sm90/gemm_plan.h"
#include "sm90/gemm_problem.h"

#include <torch/csrc/stable/accelerator.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>

namespace kernelswap {
namespace {

using sm90::DType;
using sm90::Tiles;

// The GEMMs are sm_90a code: refused on any other GPU, and by a build without 9.0a.
constexpr GpuNeed kSm90a{"the sm_90a GEMMs", "9.0a", 90, 90, "an sm_90 (Hopper) GPU"};

bool is_8bit(ScalarType dt) { return dt == ScalarType::Char || dt == ScalarType::Float8_e4m3fn; }

// The sparse layouts of _C_sparse24_prepare (CUTLASS's Sm90GemmSparseConfig): values pad K
// to 16 bytes of compressed data (K_a = K rounded up to 16 for 16-bit, 32 for 8-bit);
// meta holds one byte per 8 logical elements, with rows padded to 64 and K to 128.
void check_sparse(const char* op, const Tensor& values, const Tensor& meta, ScalarType dt, const char* dt_name,
                  int64_t K) {
  check_tensor(op, "values", values, dt, dt_name, 2);
  check_tensor(op, "meta", meta, ScalarType::Byte, "uint8", 2);
  const int64_t N = values.size(0);
  check_kn(op, K, N);
  // CUTLASS's sparse mainloop asks for 16-byte rows of the compressed values (K / 2
  // elements): K % 32 for 8-bit (CollectiveMma::can_implement refuses K = 16 or 208).
  STD_TORCH_CHECK(!is_8bit(dt) || K % 32 == 0, op, ": 8-bit 2:4 needs K to be a multiple of 32 "
                  "(16-byte rows of K/2 compressed values for TMA), got K=", K);
  const int64_t k_a = round_up(K, is_8bit(dt) ? 32 : 16);
  STD_TORCH_CHECK(values.size(1) * 2 == k_a, op, ": values has ", values.size(1), " columns; K=", K,
                  " needs ", k_a / 2, ". Make values and meta with _C_sparse24_prepare");
  STD_TORCH_CHECK(meta.size(0) == round_up(N, 64) && meta.size(1) == round_up(K, 128) / 8, op, ": meta is (",
                  meta.size(0), ", ", meta.size(1), "), expected (", round_up(N, 64), ", ", round_up(K, 128) / 8,
                  ") for N=", N, " K=", K, ". Make values and meta with _C_sparse24_prepare");
}

// The M up to which the GEMMs take their Tiles::kSmall configs: kSmallM, or
// KERNELSWAP_SM90_SMALL_M when set to a number (read once a process), to measure the crossover:
// at M <= 128 the kLarge tiles (128 weight rows) give N / 128 CTAs, 32 for N = 4096 on 132 SMs.
int64_t small_m() {
  static const int64_t m = [] {
    const char* v = std::getenv("KERNELSWAP_SM90_SMALL_M");
    char* end = nullptr;
    const long long parsed = v == nullptr ? -1 : std::strtoll(v, &end, 10);
    return v != nullptr && end != v && *end == '\0' && parsed >= 0 ? int64_t(parsed) : sm90::kSmallM;
  }();
  return m;
}

template <bool Sparse, DType In>
void launch(DType out, sm90::GemmProblem& p) {
#if KERNELSWAP_WITH_CUTLASS  // else check_device has already refused
  const bool small = p.M <= small_m();
  if constexpr (In == DType::kI8) {
    if (out == DType::kBF16) {
      small ? sm90::run_gemm<Sparse, In, DType::kBF16, Tiles::kSmall>(p)
            : sm90::run_gemm<Sparse, In, DType::kBF16, Tiles::kLarge>(p);
    } else {
      small ? sm90::run_gemm<Sparse, In, DType::kFP16, Tiles::kSmall>(p)
            : sm90::run_gemm<Sparse, In, DType::kFP16, Tiles::kLarge>(p);
    }
  } else if constexpr (In == DType::kE4M3) {  // bf16 out only (csrc/generate.py); fp8_out_type checked it
    if constexpr (!Sparse) {
      if (!small && p.fast_accum) return sm90::run_gemm<false, In, DType::kBF16, Tiles::kLargeFastAccum>(p);
    }
    small ? sm90::run_gemm<Sparse, In, DType::kBF16, Tiles::kSmall>(p)
          : sm90::run_gemm<Sparse, In, DType::kBF16, Tiles::kLarge>(p);
  } else {
    small ? sm90::run_gemm<Sparse, In, In, Tiles::kSmall>(p) : sm90::run_gemm<Sparse, In, In, Tiles::kLarge>(p);
  }
#endif
}

// What the entry points check beyond their operands: M, and the epilogue's inputs
// (x_scale per row and w_scale per column for 8-bit inputs, null for 2:4 bf16/fp16; bias per column).
void check_epilogue(const char* op, int64_t M, int64_t N, const Tensor* x_scale, const Tensor* w_scale,
                    const std::optional<Tensor>& bias) {
  STD_TORCH_CHECK(M < (1LL << 31), op, ": M must be below 2^31");
  if (x_scale) check_vector(op, "x_scale", *x_scale, M);
  if (w_scale) check_vector(op, "w_scale", *w_scale, N);
  if (bias.has_value()) check_vector(op, "bias", *bias, N);
}

// On a CUDA tensor with rows to compute: the device check and the problem for run_gemm
// (b = the weight: dense int8, or 2:4 values with their metadata). Meta tensors and M = 0
// return nothing: the output's shape is all they need.
std::optional<sm90::GemmProblem> problem(const char* op, const Tensor& x, const void* b, const void* meta,
                                         const Tensor* x_scale, const Tensor* w_scale,
                                         const std::optional<Tensor>& bias, Tensor& y, TorchWorkspace& ws) {
  if (!x.is_cuda() || x.size(0) == 0) return std::nullopt;
  check_device(op, x, kSm90a);
  return sm90::GemmProblem{b, meta, x.const_data_ptr(), opt_ptr(x_scale), opt_ptr(w_scale), opt_ptr(bias),
                           y.mutable_data_ptr(), int(x.size(0)), int(y.size(1)), int(x.size(1)),
                           x.get_device_index(), current_stream(x), ws.get()};
}

// The 8-bit input types of the scaled GEMMs: torch's dtype and its name in errors.
template <DType In> struct Input8;
template <> struct Input8<DType::kI8> {
  static constexpr ScalarType kType = ScalarType::Char;
  static constexpr const char* kName = "int8";
};
template <> struct Input8<DType::kE4M3> {
  static constexpr ScalarType kType = ScalarType::Float8_e4m3fn;
  static constexpr const char* kName = "float8_e4m3fn";
};

// The output of the scaled GEMMs: bf16 / fp16 for int8; bf16 alone is instantiated for e4m3.
template <DType In> DType scaled_out_type(const char* op, ScalarType dt) {
  if constexpr (In == DType::kE4M3) {
    STD_TORCH_CHECK(dt == ScalarType::BFloat16, op, ": out_dtype must be bfloat16 (the only output "
                    "instantiated for float8_e4m3fn inputs, see csrc/generate.py)");
  }
  return out_type(op, dt);
}

// _C_int8_mm / _C_fp8_mm: dense 8-bit x and w, the scaled epilogue.
template <DType In>
Tensor scaled_mm(const char* op, const Tensor& x, const Tensor& x_scale, const Tensor& w, const Tensor& w_scale,
                 const std::optional<Tensor>& bias, ScalarType out_dtype, bool fast_accum = false) {
  using T = Input8<In>;
  check_tensor(op, "x", x, T::kType, T::kName, 2);
  check_tensor(op, "w", w, T::kType, T::kName, 2);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  STD_TORCH_CHECK(w.size(1) == K, op, ": x is (M, K=", K, ") but w is (N, K=", w.size(1), ")");
  check_kn(op, K, N);
  check_epilogue(op, M, N, &x_scale, &w_scale, bias);
  const DType out = scaled_out_type<In>(op, out_dtype);
  Tensor y = torch::stable::new_empty(x, {M, N}, out_dtype);
  TorchWorkspace ws{&x, std::nullopt};
  auto p = problem(op, x, w.const_data_ptr(), nullptr, &x_scale, &w_scale, bias, y, ws);
  if (!p) return y;
  p->fast_accum = fast_accum;
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());  // CUTLASS launches on the current device
  launch<false, In>(out, *p);
  return y;
}

// _C_sparse24_int8_mm / _C_sparse24_fp8_mm: 8-bit x, 2:4 8-bit values + meta, the scaled epilogue.
template <DType In>
Tensor sparse24_scaled_mm(const char* op, const Tensor& x, const Tensor& x_scale, const Tensor& values,
                          const Tensor& meta, const Tensor& w_scale, const std::optional<Tensor>& bias,
                          ScalarType out_dtype) {
  using T = Input8<In>;
  check_tensor(op, "x", x, T::kType, T::kName, 2);
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  check_sparse(op, values, meta, T::kType, T::kName, K);
  check_epilogue(op, M, N, &x_scale, &w_scale, bias);
  const DType out = scaled_out_type<In>(op, out_dtype);
  Tensor y = torch::stable::new_empty(x, {M, N}, out_dtype);
  TorchWorkspace ws{&x, std::nullopt};
  auto p = problem(op, x, values.const_data_ptr(), meta.const_data_ptr(), &x_scale, &w_scale, bias, y, ws);
  if (!p) return y;
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());  // CUTLASS launches on the current device
  launch<true, In>(out, *p);
  return y;
}

}  // namespace

Tensor int8_mm(const Tensor& x, const Tensor& x_scale, const Tensor& w, const Tensor& w_scale,
               const std::optional<Tensor>& bias, ScalarType out_dtype) {
  return scaled_mm<DType::kI8>("_C_int8_mm", x, x_scale, w, w_scale, bias, out_dtype);
}

Tensor fp8_mm(const Tensor& x, const Tensor& x_scale, const Tensor& w, const Tensor& w_scale,
              const std::optional<Tensor>& bias, ScalarType out_dtype, bool fast_accum) {
  return scaled_mm<DType::kE4M3>("_C_fp8_mm", x, x_scale, w, w_scale, bias, out_dtype, fast_accum);
}

Tensor sparse24_mm(const Tensor& x, const Tensor& values, const Tensor& meta, const std::optional<Tensor>& bias) {
  constexpr const char* op = "_C_sparse24_mm";
  const ScalarType dt = x.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::BFloat16 || dt == ScalarType::Half, op, ": x must be bfloat16 or float16");
  const char* dt_name = dt == ScalarType::BFloat16 ? "bfloat16 (like x)" : "float16 (like x)";
  check_tensor(op, "x", x, dt, dt_name, 2);
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  check_sparse(op, values, meta, dt, dt_name, K);
  check_epilogue(op, M, N, nullptr, nullptr, bias);
  Tensor y = torch::stable::new_empty(x, {M, N});
  TorchWorkspace ws{&x, std::nullopt};
  auto p = problem(op, x, values.const_data_ptr(), meta.const_data_ptr(), nullptr, nullptr, bias, y, ws);
  if (!p) return y;
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());  // CUTLASS launches on the current device
  if (dt == ScalarType::BFloat16) {
    launch<true, DType::kBF16>(DType::kBF16, *p);
  } else {
    launch<true, DType::kFP16>(DType::kFP16, *p);
  }
  return y;
}

Tensor sparse24_int8_mm(const Tensor& x, const Tensor& x_scale, const Tensor& values, const Tensor& meta,
                        const Tensor& w_scale, const std::optional<Tensor>& bias, ScalarType out_dtype) {
  return sparse24_scaled_mm<DType::kI8>("_C_sparse24_int8_mm", x, x_scale, values, meta, w_scale, bias, out_dtype);
}

Tensor sparse24_fp8_mm(const Tensor& x, const Tensor& x_scale, const Tensor& values, const Tensor& meta,
                       const Tensor& w_scale, const std::optional<Tensor>& bias, ScalarType out_dtype) {
  return sparse24_scaled_mm<DType::kE4M3>("_C_sparse24_fp8_mm", x, x_scale, values, meta, w_scale, bias, out_dtype);
}

}  // namespace kernelswap

// ---------------------------------------------------------------- raw entry points (csrc/raw_entry.h)
namespace kernelswap {
namespace {

// The layers' GEMMs by number, as kernelswap_gemm_plan takes them; the 8-bit ones quantize x per token first.
// kFp8LinearFast: kFp8Linear with GemmProblem::fast_accum.
enum Kind { kInt8Linear = 0, kFp8Linear = 1, kSparse24 = 2, kSparse24Int8 = 3, kSparse24Fp8 = 4, kFp8LinearFast = 5 };

int64_t align256(int64_t v) { return round_up(v, 256); }

using sm90::GemmPlan;
using sm90::RawWorkspace;

}  // namespace
}  // namespace kernelswap

extern "C" {

// The plan of one layer's GEMM at M tokens: `kind` as in Kind, bf16 (1) or fp16 (0) activations and
// output, the weight as the op entry points take it (meta: the 2:4 metadata, else null; w_scale: null
// for 2:4 16-bit; bias fp32 or null), M, N, K, the device; *scratch_bytes gets the scratch each run needs.
// Null on an error (kernelswap_raw_error() says which).
void* kernelswap_gemm_plan(int kind, int bf16, const void* w, const void* meta, const void* w_scale,
                           const void* bias, int64_t M, int64_t N, int64_t K, int device, int64_t* scratch_bytes) {
  using namespace kernelswap;
  const char* op = "kernelswap_gemm_plan";
  const bool fp8 = kind == kFp8Linear || kind == kSparse24Fp8 || kind == kFp8LinearFast;
  const bool sparse = kind >= kSparse24 && kind <= kSparse24Fp8;
  const bool eight_bit = kind != kSparse24;
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  const bool ok =
      ((kind >= kInt8Linear && kind <= kFp8LinearFast) || raw::fail(op, ": unknown kind ", kind)) &&
      ((M >= 1 && M < (1LL << 31)) || raw::fail(op, ": M=", M, " must be in 1..2^31")) &&
      ((K > 0 && K % 16 == 0 && K < (1LL << 31)) || raw::fail(op, ": K must be a positive multiple of 16, got ", K)) &&
      ((N > 0 && N % 16 == 0 && N < (1LL << 31)) || raw::fail(op, ": N must be a positive multiple of 16, got ", N)) &&
      (!(sparse && eight_bit) || K % 32 == 0 || raw::fail(op, ": 8-bit 2:4 needs K to be a multiple of 32")) &&
      (bf16 || !fp8 ||
       raw::fail(op, ": float8_e4m3fn GEMMs write bfloat16 only")) &&
      (KERNELSWAP_WITH_CUTLASS || raw::fail(op, ": kernelswap._C was built without CUTLASS")) &&
      (std::strstr(KERNELSWAP_ARCHS, "9.0a") != nullptr || raw::fail(op, ": kernelswap._C was built without 9.0a")) &&
      ((major == 9 && minor == 0) || raw::fail(op, ": needs an sm_90 (Hopper) GPU; device ", device, " is sm_", major,
                                               minor));
  if (!ok) return nullptr;
  GemmPlan* plan = nullptr;
  raw::guarded([&] {
    auto g = std::make_unique<GemmPlan>();
    g->device = device;
    g->out = bf16 ? DType::kBF16 : DType::kFP16;
    g->x_dtype = bf16 ? ScalarType::BFloat16 : ScalarType::Half;
    g->quantize = eight_bit;
    g->fp8 = fp8;
    switch (kind) {
      case kInt8Linear: g->launch = &launch<false, DType::kI8>; break;
      case kFp8Linear:
      case kFp8LinearFast: g->launch = &launch<false, DType::kE4M3>; break;
      case kSparse24Int8: g->launch = &launch<true, DType::kI8>; break;
      case kSparse24Fp8: g->launch = &launch<true, DType::kE4M3>; break;
      default: g->launch = bf16 ? &launch<true, DType::kBF16> : &launch<true, DType::kFP16>;
    }
    if (g->quantize) {
      g->q_bytes = align256(M * K);
      g->s_bytes = align256(M * 4);
    }
    g->p = sm90::GemmProblem{w, meta, nullptr, nullptr, static_cast<const float*>(w_scale),
                             static_cast<const float*>(bias), nullptr, int(M), int(N), int(K), device, nullptr,
                             Workspace{nullptr, nullptr}};
    g->p.fast_accum = kind == kFp8LinearFast;
    *scratch_bytes = g->size_scratch();
    plan = g.release();
    return 0;
  });
  return plan;
}

// One launch of a plan (kernelswap_gemm_plan's or kernelswap_mixed_plan's): x (M, K) and out (M, N)
// contiguous, of the plan's dtype, on its device; scratch of the plan's scratch_bytes (null when that
// is 0). Returns as kernelswap_gemv_run does.
int kernelswap_gemm_run(const void* plan, const void* x, void* out, void* scratch, void* stream) {
  using namespace kernelswap;
  if (raw::misaligned(x) || raw::misaligned(out)) return raw::kMisaligned;
  const auto* g = static_cast<const GemmPlan*>(plan);
  if (scratch == nullptr && g->q_bytes + g->s_bytes + g->ws_bytes > 0) {
    return raw::fail("kernelswap GEMM: the plan needs scratch memory"), 1;
  }
  return raw::guarded([&] {
    auto* base = static_cast<char*>(scratch);
    raw::DeviceScope scope(g->device);
    sm90::GemmProblem p = g->p;
    p.stream = static_cast<cudaStream_t>(stream);
    p.out = out;
    if (g->quantize) {
      auto* s = reinterpret_cast<float*>(base + g->q_bytes);
      quantize_rows(g->fp8, g->x_dtype, x, base, s, p.M, p.K, p.stream);
      p.x = base;
      p.x_scale = s;
    } else {
      p.x = x;
    }
    RawWorkspace ws{base ? base + g->q_bytes + g->s_bytes : nullptr, static_cast<size_t>(g->ws_bytes)};
    p.workspace = Workspace{&RawWorkspace::alloc, &ws};
    p.cache = &g->cache;
    g->launch(g->out, p);
    return 0;
  });
}

}  // extern "C"

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_int8_mm", TORCH_BOX(&kernelswap::int8_mm));
  m.impl("_C_sparse24_mm", TORCH_BOX(&kernelswap::sparse24_mm));
  m.impl("_C_sparse24_int8_mm", TORCH_BOX(&kernelswap::sparse24_int8_mm));
  m.impl("_C_fp8_mm", TORCH_BOX(&kernelswap::fp8_mm));
  m.impl("_C_sparse24_fp8_mm", TORCH_BOX(&kernelswap::sparse24_fp8_mm));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_int8_mm", TORCH_BOX(&kernelswap::int8_mm));
  m.impl("_C_sparse24_mm", TORCH_BOX(&kernelswap::sparse24_mm));
  m.impl("_C_sparse24_int8_mm", TORCH_BOX(&kernelswap::sparse24_int8_mm));
  m.impl("_C_fp8_mm", TORCH_BOX(&kernelswap::fp8_mm));
  m.impl("_C_sparse24_fp8_mm", TORCH_BOX(&kernelswap::sparse24_fp8_mm));
}
