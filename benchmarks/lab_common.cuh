// What the standalone timing harnesses (benchmarks/gemv_lab.cu, benchmarks/gemm_lab.cu) share: the
// error check, device buffers filled from a hash, back-to-back launch timing between two events, and
// cuBLAS bf16 at the same shape. No torch.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

namespace lab {

// Weight copies a timing loop rotates through, so that together they exceed the L2 several times.
constexpr int64_t kRotateBytes = 4LL * 60 * 1024 * 1024;

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes from a hash, each and-ed with `mask` (0x77 keeps an e4m3 byte off its NaN codes).
static __global__ void fill_bytes(uint8_t* p, int64_t n, uint32_t seed, uint8_t mask = 0xFF) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t v = uint32_t(i) * 2654435761u ^ seed;
    v ^= v >> 13;
    v *= 0x5bd1e995u;
    p[i] = uint8_t(v >> 17) & mask;
  }
}

// fp16 / bf16 values in [-1/64, 1/64): bit patterns written from a hash.
static __global__ void fill_small(uint16_t* p, int64_t n, uint32_t seed, bool bf16) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t v = uint32_t(i) * 2246822519u ^ seed;
    v ^= v >> 15;
    const float f = (float(v & 0xFFFF) / 65536.f - 0.5f) / 32.f;
    p[i] = bf16 ? __bfloat16_as_ushort(__float2bfloat16(f)) : __half_as_ushort(__float2half(f));
  }
}

// fp32 values in [lo, hi) from a hash.
static __global__ void fill_float(float* p, int64_t n, uint32_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t v = uint32_t(i) * 2246822519u ^ seed;
    v ^= v >> 15;
    p[i] = lo + (hi - lo) * (float(v & 0xFFFF) / 65536.f);
  }
}

template <class T>
T* dev_alloc(int64_t count) {
  T* p = nullptr;
  CK(cudaMalloc(&p, std::max<int64_t>(count, 1) * sizeof(T)));
  return p;
}

// us a call of launch(i), i = 0, 1, ...: 2 * copies calls to warm up, then reps_per_copy * copies
// timed back to back between two events (each call may read the next of `copies` weight copies).
template <class Launch>
float time_launches(const Launch& launch, int copies, int reps_per_copy = 20) {
  for (int i = 0; i < 2 * copies; ++i) launch(i);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const int reps = reps_per_copy * copies;
  CK(cudaEventRecord(e0));
  for (int i = 0; i < reps; ++i) launch(i);
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0.f;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return ms * 1e3f / reps;
}

// us of cuBLAS bf16 out (M, N) = x (M, K) @ w (N, K)^T, fp32 accumulation, rotating weight copies.
inline float time_cublas_bf16(cublasHandle_t h, int M, int64_t K, int64_t N, int reps_per_copy = 20) {
  const int64_t wb = N * K * 2;
  const int copies = int(std::max<int64_t>(2, std::min<int64_t>(16, cdiv(kRotateBytes, wb))));
  std::vector<uint16_t*> w(copies);
  for (auto& p : w) {
    p = dev_alloc<uint16_t>(N * K);
    fill_small<<<1024, 256>>>(p, N * K, 7u, true);
  }
  auto* x = dev_alloc<uint16_t>(int64_t(M) * K);
  fill_small<<<256, 256>>>(x, int64_t(M) * K, 11u, true);
  auto* y = dev_alloc<uint16_t>(int64_t(M) * N);
  const float one = 1.f, zero = 0.f;
  // y^T (N x M, column-major) = W (K x N column-major, i.e. row-major N x K)^T x^T
  auto launch = [&](int i) {
    cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(N), M, int(K), &one, w[i % copies], CUDA_R_16BF, int(K), x,
                 CUDA_R_16BF, int(K), &zero, y, CUDA_R_16BF, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  const float us = time_launches(launch, copies, reps_per_copy);
  for (auto p : w) cudaFree(p);
  cudaFree(x);
  cudaFree(y);
  return us;
}

}  // namespace lab
