// Op schemas of kernelswap._C. These are low-level kernels; the public ops live in
// python/kernelswap/ops and call these when the dispatcher picks the "cuda" backend.
#include "common.h"
#include "raw_entry.h"

#include <cstring>
#include <string>

#ifndef KERNELSWAP_TORCH_HEADERS
#define KERNELSWAP_TORCH_HEADERS "unknown"
#endif

namespace kernelswap {

// What this binary was built with, as UTF-8 bytes in a CPU uint8 tensor (the stable
// ABI has no string return type): lines "archs=...", "cuda=...", "cutlass=0|1", and
// "torch=X.Y", the torch whose headers it was compiled against.
Tensor build_info() {
  std::string s = std::string("archs=") + KERNELSWAP_ARCHS + "\ncuda=" +
                  std::to_string(CUDART_VERSION / 1000) + "." +
                  std::to_string((CUDART_VERSION % 1000) / 10) +
                  "\ncutlass=" + std::to_string(KERNELSWAP_WITH_CUTLASS) +
                  "\ntorch=" + KERNELSWAP_TORCH_HEADERS;
  int64_t n = static_cast<int64_t>(s.size());
  Tensor out = torch::stable::empty({n}, ScalarType::Byte);
  std::memcpy(out.mutable_data_ptr(), s.data(), s.size());
  return out;
}

namespace raw {
namespace {
thread_local std::string last_error;
}
void set_error(const char* what) { last_error = what; }
}  // namespace raw

}  // namespace kernelswap

// What every family of raw entry points shares (csrc/raw_entry.h).
extern "C" {
// The version of the raw entry points' C signatures; python/kernelswap/ops/_raw.py checks it.
int kernelswap_raw_version() { return 2; }  // 2: kernelswap_gemm_plan kind 5 (fp8, fast accumulation)
// The message of this thread's last failed raw call.
const char* kernelswap_raw_error() { return kernelswap::raw::last_error.c_str(); }
// Frees any plan (kernelswap_gemv_plan, kernelswap_gemm_plan).
void kernelswap_raw_free(void* plan) { delete static_cast<kernelswap::raw::PlanBase*>(plan); }
}

STABLE_TORCH_LIBRARY_FRAGMENT(kernelswap, m) {
  m.def("_C_build_info() -> Tensor");
  m.def("_C_quantize_per_token_int8(Tensor x) -> (Tensor, Tensor)");
  m.def("_C_quantize_per_token_fp8(Tensor x) -> (Tensor, Tensor)");
  // sm_90a CUTLASS GEMMs (csrc/sm90_gemm_ops.cu, csrc/sparse24_prepare.cu).
  m.def("_C_int8_mm(Tensor x, Tensor x_scale, Tensor w, Tensor w_scale, Tensor? bias, ScalarType out_dtype) -> Tensor");
  m.def("_C_sparse24_prepare(Tensor w) -> (Tensor, Tensor)");
  m.def("_C_sparse24_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor");
  m.def("_C_sparse24_int8_mm(Tensor x, Tensor x_scale, Tensor values, Tensor meta, Tensor w_scale, Tensor? bias, "
        "ScalarType out_dtype) -> Tensor");
  // The same two on float8_e4m3fn inputs (sm_90a, bfloat16 out).
  m.def("_C_fp8_mm(Tensor x, Tensor x_scale, Tensor w, Tensor w_scale, Tensor? bias, ScalarType out_dtype, "
        "bool fast_accum=False) -> Tensor");
  m.def("_C_sparse24_fp8_mm(Tensor x, Tensor x_scale, Tensor values, Tensor meta, Tensor w_scale, Tensor? bias, "
        "ScalarType out_dtype) -> Tensor");
  // sm_90a mixed-input GEMMs of the weight-only layers (csrc/sm90_mixed_ops.cu), x bf16 / fp16.
  m.def("_C_int8_weight_mm(Tensor x, Tensor w, Tensor w_scale, Tensor? bias) -> Tensor");
  m.def("_C_int4_mm(Tensor x, Tensor w_packed, Tensor scale, Tensor zero, Tensor? bias, int group_size) -> Tensor");
  // sm_80+ (mma.sp) CUTLASS 2:4 GEMMs (csrc/sm80_sparse_ops.cu); layouts from kernelswap.ops.sparse24_sm80.
  m.def("_C_sparse24_mm_sm80(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor");
  m.def("_C_sparse24_int8_mm_sm80(Tensor x, Tensor x_scale, Tensor values, Tensor meta, Tensor w_scale, "
        "Tensor? bias, ScalarType out_dtype) -> Tensor");
  // Decode GEMVs, M <= 64, any sm_80+ GPU (csrc/gemv); layouts from kernelswap.ops.gemv_layout. counters is
  // scratch that every launch leaves as it found it (all zero), so it is not declared as mutated.
  m.def("_C_int4_gemv(Tensor x, Tensor w, Tensor scales, Tensor? zeros, Tensor? bias, Tensor counters, "
        "int group_size, int n) -> Tensor");
  m.def("_C_int8_weight_gemv(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, Tensor counters, int n) -> Tensor");
  m.def("_C_int8_gemv(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, Tensor counters, int n) -> Tensor");
  m.def("_C_sparse24_gemv(Tensor x, Tensor w, Tensor? bias, Tensor counters, int n) -> Tensor");
  m.def("_C_sparse24_int8_gemv(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, Tensor counters, int n) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(kernelswap, CompositeExplicitAutograd, m) {
  m.impl("_C_build_info", TORCH_BOX(&kernelswap::build_info));
}
