// Dynamic per-token (per-row) symmetric quantization, one body for two formats:
//   int8:  scale[m] = max_k |x[m,k]| / 127,  q[m,k] = round_half_even(x[m,k] / scale[m]), clamped to +-127
//   e4m3:  scale[m] = max_k |x[m,k]| / 448,  q[m,k] = e4m3(x[m,k] / scale[m]), round to nearest even,
//          saturated to +-448 (448 = the largest float8_e4m3fn value; NaN stays NaN)
// Bit-exact with the references in python/kernelswap/ops/int8.py and ops/fp8.py: IEEE division
// (__fdiv_rn, immune to --use_fast_math), rint / the satfinite e4m3 conversion; an all-zero
// row gets scale 0 and q 0; a NaN anywhere in a row makes its scale NaN, so the row's output is NaN.
#include "common.h"
#include "quantize.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <tuple>

namespace kernelswap {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// max that keeps a NaN once it has seen one (fmaxf would drop it).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// The two output formats: the largest code, and one value's code given its row's scale s.
struct Int8Format {
  using Code = int8_t;
  static constexpr float kMax = 127.f;
  static constexpr ScalarType kType = ScalarType::Char;
  static constexpr const char* kOp = "_C_quantize_per_token_int8";
  __device__ static Code encode(float x, float s) {
    const float v = s == 0.f ? 0.f : rintf(__fdiv_rn(x, s));
    return static_cast<int8_t>(fminf(fmaxf(v, -kMax), kMax));
  }
};
struct E4M3Format {
  using Code = __nv_fp8_storage_t;
  static constexpr float kMax = 448.f;
  static constexpr ScalarType kType = ScalarType::Float8_e4m3fn;
  static constexpr const char* kOp = "_C_quantize_per_token_fp8";
  // The reference divides by 1 where the scale is 0 (then every x of the row is +-0, kept as is).
  // __NV_SATFINITE clamps to +-448 after rounding to nearest even, which equals clamping first:
  // e4m3 rounds (448, 464) down to 448 anyway. Before sm_89 cuda_fp8.h converts in software.
  __device__ static Code encode(float x, float s) {
    const float v = s == 0.f ? x : __fdiv_rn(x, s);
    return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
  }
};

// V consecutive elements, moved by one load / store (16 bytes of x when V > 1).
template <typename T, int V> struct alignas(sizeof(T) * V) Vec { T v[V]; };

// One block per row; each thread reads V elements at a time (V = 16 bytes of x where K and the
// pointer allow, else 1). The max is order-independent (NaN included), so V does not change results.
// R > 0: the row is read from memory once, R vectors a thread kept in registers between the max and
// the encoding (all R loads issued before the first is used), for rows of up to R * V * kThreads
// elements; R = 0: any K, the row read twice (the second time mostly from L2), one vector at a time.
template <class F, typename T, int V, int R>
__global__ void quantize_per_token_kernel(const T* __restrict__ x,         // (M, K) row-major
                                          typename F::Code* __restrict__ q,  // (M, K)
                                          float* __restrict__ scale,         // (M,)
                                          int64_t K) {
  using In = Vec<T, V>;
  using Out = Vec<typename F::Code, V>;
  const int64_t row = blockIdx.x, n = K / V;
  const In* xr = reinterpret_cast<const In*>(x + row * K);
  float amax = 0.f;
  In kept[R > 0 ? R : 1];
  if constexpr (R > 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = threadIdx.x + int64_t(r) * kThreads;
      if (i < n) kept[r] = xr[i];
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (threadIdx.x + int64_t(r) * kThreads < n) {
#pragma unroll
        for (int j = 0; j < V; ++j) amax = nan_max(fabsf(to_float(kept[r].v[j])), amax);
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const In a = xr[i];
#pragma unroll
      for (int j = 0; j < V; ++j) amax = nan_max(fabsf(to_float(a.v[j])), amax);
    }
  }
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
  const float s = __fdiv_rn(warp_max[0], F::kMax);
  if (threadIdx.x == 0) scale[row] = s;
  Out* qr = reinterpret_cast<Out*>(q + row * K);
  auto encode = [&](const In& a, int64_t i) {
    Out c;
#pragma unroll
    for (int j = 0; j < V; ++j) c.v[j] = F::encode(to_float(a.v[j]), s);
    qr[i] = c;
  };
  if constexpr (R > 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = threadIdx.x + int64_t(r) * kThreads;
      if (i < n) encode(kept[r], i);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) encode(xr[i], i);
  }
}

// Vectors a thread keeps for a row of n vectors: the smallest of 1, 2, 4, 8 that holds it (8 x 16
// bytes = 32 registers a thread: K up to 16384 bf16), else 0 (two passes).
inline int kept_vectors(int64_t n) {
  for (int r : {1, 2, 4, 8}) {
    if (n <= int64_t(r) * kThreads) return r;
  }
  return 0;
}

template <class F, typename T, int V>
void launch_rows(const T* x, typename F::Code* q, float* scale, int64_t M, int64_t K, cudaStream_t stream) {
  switch (kept_vectors(K / V)) {
    case 1: quantize_per_token_kernel<F, T, V, 1><<<M, kThreads, 0, stream>>>(x, q, scale, K); break;
    case 2: quantize_per_token_kernel<F, T, V, 2><<<M, kThreads, 0, stream>>>(x, q, scale, K); break;
    case 4: quantize_per_token_kernel<F, T, V, 4><<<M, kThreads, 0, stream>>>(x, q, scale, K); break;
    case 8: quantize_per_token_kernel<F, T, V, 8><<<M, kThreads, 0, stream>>>(x, q, scale, K); break;
    default: quantize_per_token_kernel<F, T, V, 0><<<M, kThreads, 0, stream>>>(x, q, scale, K);
  }
}

template <class F, typename T>
void launch(const void* x, typename F::Code* q, float* scale, int64_t M, int64_t K, cudaStream_t stream) {
  constexpr int kV = 16 / sizeof(T);
  const T* xp = static_cast<const T*>(x);
  if (K % kV == 0 && reinterpret_cast<uintptr_t>(xp) % 16 == 0) {  // rows of whole 16-byte vectors
    launch_rows<F, T, kV>(xp, q, scale, M, K, stream);
  } else {
    launch_rows<F, T, 1>(xp, q, scale, M, K, stream);
  }
}

template <class F>
void quantize_as(ScalarType dt, const void* xp, void* q, float* sp, int64_t M, int64_t K, cudaStream_t stream) {
  auto* qp = static_cast<typename F::Code*>(q);
  if (dt == ScalarType::Float) {
    launch<F, float>(xp, qp, sp, M, K, stream);
  } else if (dt == ScalarType::Half) {
    launch<F, __half>(xp, qp, sp, M, K, stream);
  } else {
    STD_TORCH_CHECK(dt == ScalarType::BFloat16, F::kOp, ": x must be float32, float16 or bfloat16");
    launch<F, __nv_bfloat16>(xp, qp, sp, M, K, stream);
  }
  KS_CHECK_LAUNCH();
}

template <class F>
std::tuple<Tensor, Tensor> quantize_per_token(const Tensor& x) {
  STD_TORCH_CHECK(x.dim() == 2, F::kOp, ": x must be 2-D (M, K), got ", x.dim(), "-D");
  STD_TORCH_CHECK(x.is_contiguous(), F::kOp, ": x must be contiguous");
  const ScalarType dt = x.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::Float || dt == ScalarType::Half || dt == ScalarType::BFloat16,
                  F::kOp, ": x must be float32, float16 or bfloat16");
  const int64_t M = x.size(0), K = x.size(1);
  Tensor q = torch::stable::new_empty(x, {M, K}, F::kType);
  Tensor scale = torch::stable::new_empty(x, {M}, ScalarType::Float);
  if (!x.is_cuda() || M == 0) return {q, scale};  // Meta: shapes only.
  STD_TORCH_CHECK(M < (1LL << 31), F::kOp, ": too many rows");
  quantize_as<F>(dt, x.const_data_ptr(), q.mutable_data_ptr(), static_cast<float*>(scale.mutable_data_ptr()), M, K,
                 current_stream(x));
  return {q, scale};
}

}  // namespace

void quantize_rows(bool fp8, ScalarType x_dtype, const void* x, void* q, float* scale, int64_t M, int64_t K,
                   cudaStream_t stream) {
  STD_TORCH_CHECK(M < (1LL << 31), "kernelswap quantize: too many rows");
  if (M == 0) return;
  fp8 ? quantize_as<E4M3Format>(x_dtype, x, q, scale, M, K, stream)
      : quantize_as<Int8Format>(x_dtype, x, q, scale, M, K, stream);
}

std::tuple<Tensor, Tensor> quantize_per_token_int8(const Tensor& x) { return quantize_per_token<Int8Format>(x); }
std::tuple<Tensor, Tensor> quantize_per_token_fp8(const Tensor& x) { return quantize_per_token<E4M3Format>(x); }

}  // namespace kernelswap

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CUDA, m) {
  m.impl("_C_quantize_per_token_int8", TORCH_BOX(&kernelswap::quantize_per_token_int8));
  m.impl("_C_quantize_per_token_fp8", TORCH_BOX(&kernelswap::quantize_per_token_fp8));
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, Meta, m) {
  m.impl("_C_quantize_per_token_int8", TORCH_BOX(&kernelswap::quantize_per_token_int8));
  m.impl("_C_quantize_per_token_fp8", TORCH_BOX(&kernelswap::quantize_per_token_fp8));
}
