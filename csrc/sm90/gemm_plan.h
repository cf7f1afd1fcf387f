// A raw plan of one layer's sm_90a CUTLASS GEMM (csrc/raw_entry.h): made by kernelswap_gemm_plan
// (csrc/sm90_gemm_ops.cu: int8 / e4m3 / 2:4) or kernelswap_mixed_plan (csrc/sm90_mixed_ops.cu: the
// weight-only mixed-input GEMMs), run by kernelswap_gemm_run.
#pragma once

#include "raw_entry.h"
#include "sm90/gemm_problem.h"

#include <torch/headeronly/core/ScalarType.h>

#include <cstddef>
#include <cstdint>

namespace kernelswap::sm90 {

struct GemmPlan : raw::PlanBase {
  GemmProblem p{};  // x, x_scale, out, stream and workspace set per call
  void (*launch)(DType out, GemmProblem& p) = nullptr;
  DType out = DType::kBF16;
  bool quantize = false, fp8 = false;  // quantize x per token (to int8, or e4m3) before the GEMM
  torch::headeronly::ScalarType x_dtype = torch::headeronly::ScalarType::BFloat16;
  int64_t q_bytes = 0, s_bytes = 0, ws_bytes = 0;  // the scratch: q, its scales, CUTLASS's workspace
  mutable GemmCache cache;  // the kernel parameters of the last run (csrc/gemm_args.h)

  // CUTLASS's workspace for the plan's problem (can_implement and the workspace size read shapes
  // only, so x and out get a non-null stand-in), then the scratch a run needs: q, its scales, that.
  int64_t size_scratch() {
    GemmProblem q = p;
    q.x = p.w;
    q.out = const_cast<void*>(p.w);
    size_t ws = 0;
    q.query = &ws;
    launch(out, q);
    ws_bytes = static_cast<int64_t>(ws);
    return q_bytes + s_bytes + ws_bytes;
  }
};

// The caller's scratch as a GEMM workspace.
struct RawWorkspace {
  void* ptr;
  size_t bytes;
  static void* alloc(void* self, size_t bytes) {
    auto* w = static_cast<RawWorkspace*>(self);
    return bytes == 0 ? nullptr : bytes <= w->bytes ? w->ptr : nullptr;
  }
};

}  // namespace kernelswap::sm90
