// What the CUTLASS GEMMs of csrc/sm90 and csrc/sm80 share: element types, and the fp32
// multiply / add the epilogues use as the ComputeFn of their visitor trees.
#pragma once

#include "gemm_args.h"

#include <cutlass/array.h>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_types.h>

#include <cstdint>

namespace kernelswap {

template <DType D> struct CutlassType;
template <> struct CutlassType<DType::kBF16> { using type = cutlass::bfloat16_t; };
template <> struct CutlassType<DType::kFP16> { using type = cutlass::half_t; };
template <> struct CutlassType<DType::kI8> { using type = int8_t; };

// fp32 multiply / add with IEEE rounding at each step. nvcc would otherwise contract
// (acc * s) + bias into one FMA, which rounds once and so differs from the reference
// (ops/int8.py scale_epilogue_ref) in the last bit: the int8 paths promise bit-exactness.

template <class T> struct MulRn {
  CUTLASS_DEVICE T operator()(T const& a, T const& b) const { return __fmul_rn(a, b); }
};
template <int N> struct MulRn<cutlass::Array<float, N>> {
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& a,
                                                     cutlass::Array<float, N> const& b) const {
    cutlass::Array<float, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = __fmul_rn(a[i], b[i]);
    return r;
  }
};
template <class T> struct AddRn {
  CUTLASS_DEVICE T operator()(T const& a, T const& b) const { return __fadd_rn(a, b); }
};
template <int N> struct AddRn<cutlass::Array<float, N>> {
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& a,
                                                     cutlass::Array<float, N> const& b) const {
    cutlass::Array<float, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = __fadd_rn(a[i], b[i]);
    return r;
  }
};

}  // namespace kernelswap
