// Per-token quantization (csrc/quantize_per_token.cu), for the entry points that quantize x
// themselves before a GEMM (the raw plans of csrc/sm90_gemm_ops.cu).
#pragma once

#include "common.h"

#include <cstdint>

namespace kernelswap {

// q (M, K) int8 or float8_e4m3fn codes and scale (M,) fp32 of x (M, K) row-major float32 / float16 /
// bfloat16, launched on `stream`; throws on an unsupported dtype or a failed launch.
void quantize_rows(bool fp8, ScalarType x_dtype, const void* x, void* q, float* scale, int64_t M, int64_t K,
                   cudaStream_t stream);

}  // namespace kernelswap
