// Dynamic per-token (per-row) symmetric int8 quantization:
//   scale[m] = max_k |x[m,k]| / 127,  q[m,k] = round_half_even(x[m,k] / scale[m]).
// Bit-exact with the reference in python/kernelswap/ops/int8.py: IEEE division
// (__fdiv_rn, immune to --use_fast_math) and rint; an all-zero row gets scale 0 and
// q 0; a NaN anywhere in a row makes its scale NaN, so the row's output is NaN.
#include "common.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <tuple>

namespace kernelswap {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// max that keeps a NaN once it has seen one (fmaxf would drop it).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

template <typename T>
__global__ void quantize_per_token_kernel(const T* __restrict__ x,  // (M, K) row-major
                                          int8_t* __restrict__ q,   // (M, K)
                                          float* __restrict__ scale,  // (M,)
                                          int64_t K) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * K;
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) amax = nan_max(fabsf(to_float(xr[k])), amax);
  __shared__ float warp_max[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) amax = nan_max(__shfl_xor_sync(0xffffffff, amax, off), amax);
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    amax = threadIdx.x < kThreads / 32 ? warp_max[threadIdx.x] : 0.f;
    for (int off = 16; off > 0; off >>= 1) amax = nan_max(__shfl_xor_sync(0xffffffff, amax, off), amax);
    if (threadIdx.x == 0) warp_max[0] = amax;
  }
  __syncthreads();
  const float s = __fdiv_rn(warp_max[0], 127.f);
  if (threadIdx.x == 0) scale[row] = s;
  int8_t* qr = q + row * K;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    float v = s == 0.f ? 0.f : rintf(__fdiv_rn(to_float(xr[k]), s));
    qr[k] = static_cast<int8_t>(fminf(fmaxf(v, -127.f), 127.f));
  }
}

}  // namespace

std::tuple<Tensor, Tensor> quantize_per_token_int8(const Tensor& x) {
  STD_TORCH_CHECK(x.dim() == 2, "_C_quantize_per_token_int8: x must be 2-D (M, K), got ", x.dim(), "-D");
  STD_TORCH_CHECK(x.is_contiguous(), "_C_quantize_per_token_int8: x must be contiguous");
  const ScalarType dt = x.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::Float || dt == ScalarType::Half || dt == ScalarType::BFloat16,
                  "_C_quantize_per_token_int8: x must be float32, float16 or bfloat16");
  const int64_t M = x.size(0), K = x.size(1);
  Tensor q = torch::stable::new_empty(x, {M, K}, ScalarType::Char);
  Tensor scale = torch::stable::new_empty(x, {M}, ScalarType::Float);
  if (!x.is_cuda() || M == 0) return {q, scale};  // Meta: shapes only.
  STD_TORCH_CHECK(M < (1LL << 31), "_C_quantize_per_token_int8: too many rows");
  cudaStream_t stream = current_stream(x);
  auto* qp = static_cast<int8_t*>(q.mutable_data_ptr());
  auto* sp = static_cast<float*>(scale.mutable_data_ptr());
  const void* xp = x.const_data_ptr();
  if (dt == ScalarType::Float) {
    quantize_per_token_kernel<<<M, kThreads, 0, stream>>>(static_cast<const float*>(xp), qp, sp, K);
  } else if (dt == ScalarType::Half) {
    quantize_per_token_kernel<<<M, kThreads, 0, stream>>>(static_cast<const __half*>(xp), qp, sp, K);
  } else {
    quantize_per_token_kernel<<<M, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(xp), qp, sp, K);
  }
  KS_CHECK_LAUNCH();
  return {q, scale};
}

}  // namespace kernelswap

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_quantize_per_token_int8", TORCH_BOX(&kernelswap::quantize_per_token_int8));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_quantize_per_token_int8", TORCH_BOX(&kernelswap::quantize_per_token_int8));
}
