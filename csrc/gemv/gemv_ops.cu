// Entry points of the decode GEMVs (M <= 64), one per weight format, all launching
// gemv::gemv_kernel (csrc/gemv/gemv_kernel.cuh) on weights in the layouts of
// python/kernelswap/ops/gemv_layout.py:
//
//   _C_int4_gemv(x, w, scales, zeros, bias, counters, group_size, n)   W4A16
//   _C_int8_weight_gemv(x, w, w_scale, bias, counters, n)              W8A16
//   _C_int8_gemv(x, w, w_scale, bias, counters, n)                     W8A8, x quantized per token inside
//   _C_sparse24_gemv(x, w, bias, counters, n)                          2:4 bf16 / fp16 (values and meta in w)
//   _C_sparse24_int8_gemv(x, w, w_scale, bias, counters, n)            2:4 int8, x quantized per token inside
//
//   x (M, K) bf16 / fp16, contiguous, 16-byte aligned, K % 8 == 0, M <= 64;
//   w (ceil(n / 16), B * bytes_a_batch) uint8, B = ceil(K / 256) batches of 256 K a tile; for W8A16
//   and W8A8 also the int8 (n, K) weight itself (K % 16 == 0, 16-byte aligned: the row formats of
//   gemv_formats_rows.cuh, no prepared copy);
//   int4: scales (ceil(n / 16), B * 256 / group_size * 16) fp16, zeros the same in uint8 or None;
//   int8: w_scale (n,) fp32; bias (n,) fp32 or None; counters (>= ceil(n / 64),) int32, all zero
//   (each launch leaves them zero again: two launches on one weight must not run concurrently).
//   -> (M, n) x.dtype
// The raw entry points of the same kernels are in gemv_raw.cu; what both use, in gemv_launch.h.
#include "common.h"

#include "gemv/gemv_launch.h"
#include "op_checks.h"

#include <torch/csrc/stable/accelerator.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <optional>

namespace kernelswap {
namespace {

using namespace gemv;  // the kernel's and gemv_launch.h's names

int sm_count(int dev) {
  static int cache[64] = {};
  if (dev < 0 || dev >= 64) dev = 0;
  if (cache[dev] == 0) {
    int n = 0;
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    cache[dev] = n > 0 ? n : 1;
  }
  return cache[dev];
}


// A tensor the kernel reads or writes must live on x's GPU (Meta calls check shapes only).
void check_on_x_device(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  if (!x.is_cuda()) return;
  STD_TORCH_CHECK(t.is_cuda() && t.get_device_index() == x.get_device_index(), op, ": ", name,
                  " must be on x's CUDA device ", x.get_device_index());
}

// What every format checks: x, w (a prepared layout of bytes_a_batch bytes a batch and tile, or with
// bytes_a_batch 0 the int8 row-major (n, K) weight of the row formats), bias, counters.
void check_common(const char* op, const Tensor& x, const Tensor& w, int64_t bytes_a_batch,
                  const std::optional<Tensor>& bias, const Tensor& counters, int64_t n) {
  const ScalarType dt = x.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::BFloat16 || dt == ScalarType::Half, op, ": x must be bfloat16 or float16");
  check_tensor(op, "x", x, dt, "bfloat16 / float16", 2);
  const int64_t M = x.size(0), K = x.size(1);
  STD_TORCH_CHECK(M <= kMaxM, op, ": M=", M, " rows; the GEMV serves M <= ", kMaxM);
  STD_TORCH_CHECK(K > 0 && K % 8 == 0 && K < (1LL << 31), op, ": K must be a positive multiple of 8 below 2^31, got ",
                  K);
  STD_TORCH_CHECK(n > 0 && n < (1LL << 31), op, ": n must be positive and below 2^31, got ", n);
  if (bytes_a_batch == 0) {
    check_tensor(op, "w", w, ScalarType::Char, "int8", 2);
    STD_TORCH_CHECK(w.size(0) == n && w.size(1) == K, op, ": w is (", w.size(0), ", ", w.size(1), "), expected (", n,
                    ", ", K, ")");
    STD_TORCH_CHECK(K % 16 == 0, op, ": an int8 (n, K) w needs K % 16 == 0 (16-byte rows), got K=", K,
                    "; use its kernelswap.ops.gemv_layout form");
    STD_TORCH_CHECK(!w.is_cuda() || reinterpret_cast<uintptr_t>(w.const_data_ptr()) % 16 == 0, op,
                    ": an int8 (n, K) w must be 16-byte aligned (not an offset view)");
  } else {
    check_tensor(op, "w", w, ScalarType::Byte, "uint8", 2);
    const int64_t batches = ceil_div(K, kBatchK);
    STD_TORCH_CHECK(w.size(0) == ceil_div(n, kTileN) && w.size(1) == batches * bytes_a_batch, op, ": w is (",
                    w.size(0), ", ", w.size(1), "), expected (", ceil_div(n, kTileN), ", ", batches * bytes_a_batch,
                    ") for n=", n, " K=", K, "; make it with kernelswap.ops.gemv_layout");
  }
  if (bias.has_value()) check_vector(op, "bias", *bias, n);
  check_on_x_device(op, "w", w, x);
  check_on_x_device(op, "counters", counters, x);
  if (bias.has_value()) check_on_x_device(op, "bias", *bias, x);
  STD_TORCH_CHECK(counters.dim() == 1 && counters.scalar_type() == ScalarType::Int && counters.is_contiguous() &&
                      counters.size(0) >= ceil_div(ceil_div(n, kTileN), kMinWarps),
                  op, ": counters must be a contiguous int32 vector of at least ceil(n / 64) zeros");
}

// The launcher of one (format, activation, NT) instantiation.
template <class Act, class F, int NT>
Launcher launcher_of() {
  return {[](int64_t n_blocks, int64_t batches, int m, int sms) {
            return gemv::plan_splits<F>(n_blocks, batches, m, 8 * NT, sms);
          },
          [](const Args& a, dim3 grid, int smem, bool pdl, cudaStream_t stream) {
            cudaLaunchAttribute attr{};
            attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
            attr.val.programmaticStreamSerializationAllowed = 1;
            cudaLaunchConfig_t cfg{};
            cfg.gridDim = grid;
            cfg.blockDim = dim3(F::kWarps * 32);
            cfg.dynamicSmemBytes = static_cast<size_t>(smem);
            cfg.stream = stream;
            cfg.attrs = &attr;
            cfg.numAttrs = pdl ? 1 : 0;
            const cudaError_t e = cudaLaunchKernelEx(&cfg, gemv::gemv_kernel<Act, F, NT>, a);
            STD_TORCH_CHECK(e == cudaSuccess, "kernelswap GEMV: launch failed: ", cudaGetErrorString(e));
          },
          F::kWarps, F::kPdl};
}

// NT = the number of 8-token fragments: M <= 8, 16, 32, 64.
template <class Act, class F>
Launcher launcher_for_m(int64_t m) {
  if (m <= 8) return launcher_of<Act, F, 1>();
  if (m <= 16) return launcher_of<Act, F, 2>();
  if (m <= 32) return launcher_of<Act, F, 4>();
  return launcher_of<Act, F, 8>();
}

// Whether a launcher's launches on `dev` use programmatic dependent launch: an sm_90+ GPU, and
// KERNELSWAP_PDL (read once a process) unset (the formats whose F::kPdl says so), "all" (every
// format: to measure them) or "0" (none).
bool pdl_on(const Launcher& l, int dev) {
  static const int mode = [] {  // 0 none, 1 the formats' own choice, 2 all
    const char* v = std::getenv("KERNELSWAP_PDL");
    if (v == nullptr) return 1;
    return std::strcmp(v, "0") == 0 ? 0 : std::strcmp(v, "all") == 0 ? 2 : 1;
  }();
  static int major[64] = {};
  if (dev < 0 || dev >= 64 || mode == 0 || (mode == 1 && !l.pdl)) return false;
  if (major[dev] == 0) cudaDeviceGetAttribute(&major[dev], cudaDevAttrComputeCapabilityMajor, dev);
  return major[dev] >= 9;
}


// The op entry points' launch: the workspace from torch's allocator, the current stream.
void launch(const Launcher& l, const Args& a, const Tensor& x) {
  Launch r = plan_launch(l, a, x.get_device_index());
  std::optional<Tensor> ws;
  if (r.ws_bytes > 0) {
    ws = torch::stable::new_empty(x, {r.ws_bytes}, ScalarType::Byte);
    r.a.ws = ws->mutable_data_ptr();
  }
  r.l.run(r.a, r.grid, r.smem, r.pdl, current_stream(x));
}


// The op entry points' Args; null when there is nothing to launch.
std::optional<Args> args(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, const Tensor& counters,
                         Tensor& y) {
  if (!x.is_cuda() || x.size(0) == 0) return std::nullopt;  // Meta, or no rows: the shape is all
  Args a = fill_args(w.const_data_ptr(), opt_ptr(bias), counters.mutable_data_ptr(), x.size(0), x.size(1), y.size(1));
  a.x = x.const_data_ptr();
  a.out = y.mutable_data_ptr();
  return a;
}

template <class Act>
using Int4G32 = gemv::Int4<Act, 32>;
template <class Act>
using Int4G64 = gemv::Int4<Act, 64>;
template <class Act>
using Int4G128 = gemv::Int4<Act, 128>;


template <template <class> class F>
Launcher for_act(bool bf16, int64_t m) {
  return bf16 ? launcher_for_m<gemv::BF16, F<gemv::BF16>>(m) : launcher_for_m<gemv::FP16, F<gemv::FP16>>(m);
}


}  // namespace

namespace gemv {

Launch plan_launch(const Launcher& l, const Args& a, int device) {
  const int64_t n_blocks = ceil_div(a.n_tiles, l.warps);
  STD_TORCH_CHECK(n_blocks < (1LL << 31) && a.batches < (1 << 30), "kernelswap GEMV: problem too large");
  const gemv::Plan p = l.plan(n_blocks, a.batches, a.M, sm_count(device));
  STD_TORCH_CHECK(p.smem <= gemv::kSmemLimit, "kernelswap GEMV: K=", a.K, " at M=", a.M,
                  " needs more shared memory than a block has");
  Launch r{l, a, dim3(static_cast<unsigned>(n_blocks), static_cast<unsigned>(p.splits)), p.smem, 0};
  r.a.batches_per_split = p.batches_per_split;
  if (p.splits > 1) r.ws_bytes = int64_t(p.splits) * a.M * a.N * 4;
  r.pdl = pdl_on(l, device);
  return r;
}

Args fill_args(const void* w, const float* bias, void* counters, int64_t M, int64_t K, int64_t N) {
  Args a{};
  a.w = static_cast<const uint4*>(w);
  a.bias = bias;
  a.counters = static_cast<int*>(counters);
  a.K = K;
  a.M = static_cast<int>(M);
  a.N = static_cast<int>(N);
  a.n_tiles = static_cast<int>(ceil_div(N, kTileN));
  a.batches = static_cast<int>(ceil_div(K, kBatchK));
  return a;
}

Launcher pick(int format, int group_size, bool bf16, int64_t m) {
  if (format == kInt4) {
    STD_TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128,
                    "kernelswap GEMV: group_size must be 32, 64 or 128, got ", group_size);
    return group_size == 32 ? for_act<Int4G32>(bf16, m)
                            : group_size == 64 ? for_act<Int4G64>(bf16, m) : for_act<Int4G128>(bf16, m);
  }
  STD_TORCH_CHECK(format >= kInt8Weight && format <= kInt8Rows, "kernelswap GEMV: unknown format ", format);
  if (format == kInt8WeightRows) return for_act<gemv::Int8W16Rows>(bf16, m);
  if (format == kInt8Rows) return for_act<gemv::Int8W8Rows>(bf16, m);
  if (format == kSparse24) return for_act<gemv::Sparse24>(bf16, m);
  if (format == kSparse24Int8) return for_act<gemv::Sparse24Int8>(bf16, m);
  return format == kInt8Weight ? for_act<gemv::Int8W16>(bf16, m) : for_act<gemv::Int8W8>(bf16, m);
}

}  // namespace gemv

Tensor int4_gemv(const Tensor& x, const Tensor& w, const Tensor& scales, const std::optional<Tensor>& zeros,
                 const std::optional<Tensor>& bias, const Tensor& counters, int64_t group_size, int64_t n) {
  constexpr const char* op = "_C_int4_gemv";
  STD_TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
                  ": group_size must be 32, 64 or 128, got ", group_size);
  check_common(op, x, w, 4 * 32 * 16, bias, counters, n);
  const int64_t cols = ceil_div(x.size(1), kBatchK) * (kBatchK / group_size) * 16;
  check_tensor(op, "scales", scales, ScalarType::Half, "float16", 2);
  STD_TORCH_CHECK(scales.size(0) == w.size(0) && scales.size(1) == cols, op, ": scales is (", scales.size(0), ", ",
                  scales.size(1), "), expected (", w.size(0), ", ", cols, "); make it with kernelswap.ops.gemv_layout");
  check_on_x_device(op, "scales", scales, x);
  if (zeros.has_value()) {
    check_tensor(op, "zeros", *zeros, ScalarType::Byte, "uint8", 2);
    check_on_x_device(op, "zeros", *zeros, x);
    STD_TORCH_CHECK(zeros->size(0) == w.size(0) && zeros->size(1) == cols, op, ": zeros must have the shape of scales");
  }
  Tensor y = torch::stable::new_empty(x, {x.size(0), n});
  auto a = args(x, w, bias, counters, y);
  if (!a) return y;
  a->scales = scales.const_data_ptr();
  a->zeros = zeros.has_value() ? zeros->const_data_ptr() : nullptr;
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  launch(pick(kInt4, int(group_size), x.scalar_type() == ScalarType::BFloat16, a->M), *a, x);
  return y;
}

// An int8 w (n, K) is the weight as the layer holds it (format + 4: its row format), a uint8 one a
// prepared layout of `loads` loads a batch.
Tensor int8_gemv_impl(const char* op, int format, int loads, const Tensor& x, const Tensor& w, const Tensor& w_scale,
                      const std::optional<Tensor>& bias, const Tensor& counters, int64_t n) {
  const bool rows = w.scalar_type() == ScalarType::Char && format != kSparse24Int8;
  if (rows) format += kInt8WeightRows - kInt8Weight;
  check_common(op, x, w, rows ? 0 : loads * 32 * 16, bias, counters, n);
  check_vector(op, "w_scale", w_scale, n);
  check_on_x_device(op, "w_scale", w_scale, x);
  STD_TORCH_CHECK(x.size(1) <= (1LL << 17), op, ": K must be at most 2^17 (int32 accumulation is exact there)");
  Tensor y = torch::stable::new_empty(x, {x.size(0), n});
  auto a = args(x, w, bias, counters, y);
  if (!a) return y;
  a->scales = w_scale.const_data_ptr();
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  launch(pick(format, 0, x.scalar_type() == ScalarType::BFloat16, a->M), *a, x);
  return y;
}

Tensor int8_weight_gemv(const Tensor& x, const Tensor& w, const Tensor& w_scale, const std::optional<Tensor>& bias,
                        const Tensor& counters, int64_t n) {
  return int8_gemv_impl("_C_int8_weight_gemv", kInt8Weight, gemv::Int8W16<gemv::BF16>::kLoads, x, w, w_scale, bias,
                        counters, n);
}

Tensor int8_gemv(const Tensor& x, const Tensor& w, const Tensor& w_scale, const std::optional<Tensor>& bias,
                 const Tensor& counters, int64_t n) {
  return int8_gemv_impl("_C_int8_gemv", kInt8, gemv::Int8W8<gemv::BF16>::kLoads, x, w, w_scale, bias, counters, n);
}

Tensor sparse24_int8_gemv(const Tensor& x, const Tensor& w, const Tensor& w_scale, const std::optional<Tensor>& bias,
                          const Tensor& counters, int64_t n) {
  return int8_gemv_impl("_C_sparse24_int8_gemv", kSparse24Int8, gemv::Sparse24Int8<gemv::BF16>::kLoads, x, w, w_scale,
                        bias, counters, n);
}

Tensor sparse24_gemv(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, const Tensor& counters,
                     int64_t n) {
  constexpr const char* op = "_C_sparse24_gemv";
  check_common(op, x, w, gemv::Sparse24<gemv::BF16>::kLoads * 32 * 16, bias, counters, n);
  Tensor y = torch::stable::new_empty(x, {x.size(0), n});
  auto a = args(x, w, bias, counters, y);
  if (!a) return y;
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  launch(pick(kSparse24, 0, x.scalar_type() == ScalarType::BFloat16, a->M), *a, x);
  return y;
}

}  // namespace kernelswap


STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_int4_gemv", TORCH_BOX(&kernelswap::int4_gemv));
  m.impl("_C_int8_weight_gemv", TORCH_BOX(&kernelswap::int8_weight_gemv));
  m.impl("_C_int8_gemv", TORCH_BOX(&kernelswap::int8_gemv));
  m.impl("_C_sparse24_gemv", TORCH_BOX(&kernelswap::sparse24_gemv));
  m.impl("_C_sparse24_int8_gemv", TORCH_BOX(&kernelswap::sparse24_int8_gemv));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_int4_gemv", TORCH_BOX(&kernelswap::int4_gemv));
  m.impl("_C_int8_weight_gemv", TORCH_BOX(&kernelswap::int8_weight_gemv));
  m.impl("_C_int8_gemv", TORCH_BOX(&kernelswap::int8_gemv));
  m.impl("_C_sparse24_gemv", TORCH_BOX(&kernelswap::sparse24_gemv));
  m.impl("_C_sparse24_int8_gemv", TORCH_BOX(&kernelswap::sparse24_int8_gemv));
}
