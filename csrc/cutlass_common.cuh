// What the CUTLASS GEMMs of csrc/sm90 and csrc/sm80 share: element types, the fp32
// multiply / add the epilogues use as the ComputeFn of their visitor trees, and the launch.
#pragma once

#include "gemm_args.h"

#include <cutlass/array.h>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_types.h>

#include <cstdint>

namespace kernelswap {

// Check `args` and set `gemm` up for them, with its workspace from p.workspace; with p.query set,
// only store how many bytes that workspace is there and return false. Every failure raises,
// naming `what` and the problem.
template <class Device>
bool set_up_cutlass(const char* what, const typename Device::Arguments& args, const GemmProblem& p, Device& gemm) {
  cutlass::Status st = Device::can_implement(args);
  STD_TORCH_CHECK(st == cutlass::Status::kSuccess, "kernelswap._C ", what, ": CUTLASS cannot run M=", p.M,
                  " N=", p.N, " K=", p.K, ": ", cutlassGetStatusString(st));
  const size_t ws_bytes = Device::get_workspace_size(args);
  if (p.query != nullptr) {
    *p.query = ws_bytes;
    return false;
  }
  void* ws = p.workspace.alloc(p.workspace.ctx, ws_bytes);
  STD_TORCH_CHECK(ws != nullptr || ws_bytes == 0, "kernelswap._C ", what, ": no workspace of ", ws_bytes, " bytes");
  st = gemm.initialize(args, ws, p.stream);  // also sets the kernel's shared-memory attribute
  STD_TORCH_CHECK(st == cutlass::Status::kSuccess, "kernelswap._C ", what, ": initialize failed: ",
                  cutlassGetStatusString(st));
  return true;
}

// The status of a CUTLASS launch, and the launch error if any, raised naming `what`.
inline void check_cutlass_launch(const char* what, cutlass::Status st) {
  STD_TORCH_CHECK(st == cutlass::Status::kSuccess, "kernelswap._C ", what, ": launch failed: ",
                  cutlassGetStatusString(st));
  KS_CHECK_LAUNCH();
}

// Check, set up and launch a CUTLASS device-level GEMM (2.x or 3.x adapter) on p.stream,
// with its workspace from p.workspace (or, with p.query set, only say how many bytes that
// is); every failure raises, naming `what` and the problem.
template <class Device>
void run_cutlass(const char* what, const typename Device::Arguments& args, const GemmProblem& p) {
  Device gemm;
  if (set_up_cutlass(what, args, p, gemm)) check_cutlass_launch(what, gemm.run(p.stream));
}

template <DType D> struct CutlassType;
template <> struct CutlassType<DType::kBF16> { using type = cutlass::bfloat16_t; };
template <> struct CutlassType<DType::kFP16> { using type = cutlass::half_t; };
template <> struct CutlassType<DType::kI8> { using type = int8_t; };
template <> struct CutlassType<DType::kE4M3> { using type = cutlass::float_e4m3_t; };

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
