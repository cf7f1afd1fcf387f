// Entry points of the decode GEMVs (M <= 64), one per weight format, all launching
// gemv::gemv_kernel (csrc/gemv/gemv_kernel.cuh) on weights in the layouts of
// python/kernelswap/ops/gemv_layout.py:
//
//   _C_int4_gemv(x, w, scales, zeros, bias, counters, group_size, n)   W4A16
//   _C_int8_weight_gemv(x, w, w_scale, bias, counters, n)              W8A16
//   _C_int8_gemv(x, w, w_scale, bias, counters, n)                     W8A8, x quantized per token inside
//
//   x (M, K) bf16 / fp16, contiguous, 16-byte aligned, K % 8 == 0, M <= 64;
//   w (ceil(n / 16), B * bytes_a_batch) uint8, B = ceil(K / 256) batches of 256 K a tile;
//   int4: scales (ceil(n / 16), B * 256 / group_size * 16) fp16, zeros the same in uint8 or None;
//   int8: w_scale (n,) fp32; bias (n,) fp32 or None; counters (>= ceil(n / 64),) int32, all zero
//   (each launch leaves them zero again: two launches on one weight must not run concurrently).
//   -> (M, n) x.dtype
#include "common.h"

#include "gemv/gemv_kernel.cuh"
#include "op_checks.h"

#include <torch/csrc/stable/accelerator.h>

#include <algorithm>
#include <type_traits>
#include <optional>

namespace kernelswap {
namespace {

using gemv::Args;
using gemv::kBatchK;
using gemv::kTileN;
using gemv::kMinWarps;

constexpr int64_t kMaxM = 64;

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

using gemv::ceil_div;

// A tensor the kernel reads or writes must live on x's GPU (Meta calls check shapes only).
void check_on_x_device(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  if (!x.is_cuda()) return;
  STD_TORCH_CHECK(t.is_cuda() && t.get_device_index() == x.get_device_index(), op, ": ", name,
                  " must be on x's CUDA device ", x.get_device_index());
}

// What every format checks: x, the prepared weight's shape, bias, counters. Returns the batch count.
int64_t check_common(const char* op, const Tensor& x, const Tensor& w, int64_t bytes_a_batch,
                     const std::optional<Tensor>& bias, const Tensor& counters, int64_t n) {
  const ScalarType dt = x.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::BFloat16 || dt == ScalarType::Half, op, ": x must be bfloat16 or float16");
  check_tensor(op, "x", x, dt, "bfloat16 / float16", 2);
  const int64_t M = x.size(0), K = x.size(1);
  STD_TORCH_CHECK(M <= kMaxM, op, ": M=", M, " rows; the GEMV serves M <= ", kMaxM);
  STD_TORCH_CHECK(K > 0 && K % 8 == 0 && K < (1LL << 31), op, ": K must be a positive multiple of 8 below 2^31, got ",
                  K);
  STD_TORCH_CHECK(n > 0 && n < (1LL << 31), op, ": n must be positive and below 2^31, got ", n);
  check_tensor(op, "w", w, ScalarType::Byte, "uint8", 2);
  const int64_t batches = ceil_div(K, kBatchK);
  STD_TORCH_CHECK(w.size(0) == ceil_div(n, kTileN) && w.size(1) == batches * bytes_a_batch, op, ": w is (",
                  w.size(0), ", ", w.size(1), "), expected (", ceil_div(n, kTileN), ", ", batches * bytes_a_batch,
                  ") for n=", n, " K=", K, "; make it with kernelswap.ops.gemv_layout");
  if (bias.has_value()) check_vector(op, "bias", *bias, n);
  check_on_x_device(op, "w", w, x);
  check_on_x_device(op, "counters", counters, x);
  if (bias.has_value()) check_on_x_device(op, "bias", *bias, x);
  STD_TORCH_CHECK(counters.dim() == 1 && counters.scalar_type() == ScalarType::Int && counters.is_contiguous() &&
                      counters.size(0) >= ceil_div(ceil_div(n, kTileN), kMinWarps),
                  op, ": counters must be a contiguous int32 vector of at least ceil(n / 64) zeros");
  return batches;
}

template <class Act, class F, int NT>
void launch_nt(Args a, const Tensor& x, int64_t n_blocks) {
  const gemv::Plan p = gemv::plan_splits<F>(n_blocks, a.batches, a.M, 8 * NT, sm_count(x.get_device_index()));
  STD_TORCH_CHECK(p.smem <= gemv::kSmemLimit, "kernelswap GEMV: K=", a.K, " at M=", a.M,
                  " needs more shared memory than a block has");
  const int splits = p.splits, smem = p.smem;
  a.batches_per_split = p.batches_per_split;
  std::optional<Tensor> ws;
  if (splits > 1) {
    ws = torch::stable::new_empty(x, {int64_t(splits), int64_t(a.M), int64_t(a.N)}, std::is_same_v<typename F::Acc, int> ? ScalarType::Int
                                                                                            : ScalarType::Float);
    a.ws = ws->mutable_data_ptr();
  }
  const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(splits));
  gemv::gemv_kernel<Act, F, NT><<<grid, F::kWarps * 32, smem, current_stream(x)>>>(a);
  KS_CHECK_LAUNCH();
}

// NT = the number of 8-token fragments: M <= 8, 16, 32, 64.
template <class Act, class F>
void launch(const Args& a, const Tensor& x) {
  const int64_t n_blocks = ceil_div(a.n_tiles, F::kWarps);
  STD_TORCH_CHECK(n_blocks < (1LL << 31) && a.batches < (1 << 30), "kernelswap GEMV: problem too large");
  if (a.M <= 8) {
    launch_nt<Act, F, 1>(a, x, n_blocks);
  } else if (a.M <= 16) {
    launch_nt<Act, F, 2>(a, x, n_blocks);
  } else if (a.M <= 32) {
    launch_nt<Act, F, 4>(a, x, n_blocks);
  } else {
    launch_nt<Act, F, 8>(a, x, n_blocks);
  }
}

// The Args every format fills the same way; null when there is nothing to launch.
std::optional<Args> args(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, const Tensor& counters,
                         Tensor& y, int64_t batches) {
  if (!x.is_cuda() || x.size(0) == 0) return std::nullopt;  // Meta, or no rows: the shape is all
  Args a{};
  a.x = x.const_data_ptr();
  a.w = static_cast<const uint4*>(w.const_data_ptr());
  a.bias = opt_ptr(bias);
  a.out = y.mutable_data_ptr();
  a.counters = static_cast<int*>(counters.mutable_data_ptr());
  a.K = x.size(1);
  a.M = static_cast<int>(x.size(0));
  a.N = static_cast<int>(y.size(1));
  a.n_tiles = static_cast<int>(w.size(0));
  a.batches = static_cast<int>(batches);
  return a;
}

template <template <class> class F>
void launch_act(const Args& a, const Tensor& x) {
  if (x.scalar_type() == ScalarType::BFloat16) {
    launch<gemv::BF16, F<gemv::BF16>>(a, x);
  } else {
    launch<gemv::FP16, F<gemv::FP16>>(a, x);
  }
}

template <class Act>
using Int4G32 = gemv::Int4<Act, 32>;
template <class Act>
using Int4G64 = gemv::Int4<Act, 64>;
template <class Act>
using Int4G128 = gemv::Int4<Act, 128>;

}  // namespace

Tensor int4_gemv(const Tensor& x, const Tensor& w, const Tensor& scales, const std::optional<Tensor>& zeros,
                 const std::optional<Tensor>& bias, const Tensor& counters, int64_t group_size, int64_t n) {
  constexpr const char* op = "_C_int4_gemv";
  STD_TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
                  ": group_size must be 32, 64 or 128, got ", group_size);
  const int64_t batches = check_common(op, x, w, 4 * 32 * 16, bias, counters, n);
  const int64_t cols = batches * (kBatchK / group_size) * 16;
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
  auto a = args(x, w, bias, counters, y, batches);
  if (!a) return y;
  a->scales = scales.const_data_ptr();
  a->zeros = zeros.has_value() ? zeros->const_data_ptr() : nullptr;
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  if (group_size == 32) {
    launch_act<Int4G32>(*a, x);
  } else if (group_size == 64) {
    launch_act<Int4G64>(*a, x);
  } else {
    launch_act<Int4G128>(*a, x);
  }
  return y;
}

template <template <class> class F>
Tensor int8_gemv_impl(const char* op, const Tensor& x, const Tensor& w, const Tensor& w_scale,
                      const std::optional<Tensor>& bias, const Tensor& counters, int64_t n) {
  const int64_t batches = check_common(op, x, w, 8 * 32 * 16, bias, counters, n);
  check_vector(op, "w_scale", w_scale, n);
  check_on_x_device(op, "w_scale", w_scale, x);
  STD_TORCH_CHECK(x.size(1) <= (1LL << 17), op, ": K must be at most 2^17 (int32 accumulation is exact there)");
  Tensor y = torch::stable::new_empty(x, {x.size(0), n});
  auto a = args(x, w, bias, counters, y, batches);
  if (!a) return y;
  a->scales = w_scale.const_data_ptr();
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  launch_act<F>(*a, x);
  return y;
}

Tensor int8_weight_gemv(const Tensor& x, const Tensor& w, const Tensor& w_scale, const std::optional<Tensor>& bias,
                        const Tensor& counters, int64_t n) {
  return int8_gemv_impl<gemv::Int8W16>("_C_int8_weight_gemv", x, w, w_scale, bias, counters, n);
}

Tensor int8_gemv(const Tensor& x, const Tensor& w, const Tensor& w_scale, const std::optional<Tensor>& bias,
                 const Tensor& counters, int64_t n) {
  return int8_gemv_impl<gemv::Int8W8>("_C_int8_gemv", x, w, w_scale, bias, counters, n);
}

}  // namespace kernelswap

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_int4_gemv", TORCH_BOX(&kernelswap::int4_gemv));
  m.impl("_C_int8_weight_gemv", TORCH_BOX(&kernelswap::int8_weight_gemv));
  m.impl("_C_int8_gemv", TORCH_BOX(&kernelswap::int8_gemv));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_int4_gemv", TORCH_BOX(&kernelswap::int4_gemv));
  m.impl("_C_int8_weight_gemv", TORCH_BOX(&kernelswap::int8_weight_gemv));
  m.impl("_C_int8_gemv", TORCH_BOX(&kernelswap::int8_gemv));
}
