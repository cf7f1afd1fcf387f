// The raw entry points of the decode GEMVs (csrc/raw_entry.h; python/kernelswap/ops/_raw.py calls
// them): a plan made once per layer and input layout, then one launch a call with no torch
// dispatch. The launchers and the split plan are gemv_ops.cu's (csrc/gemv/gemv_launch.h).
#include "common.h"

#include "gemv/gemv_launch.h"
#include "raw_entry.h"

#include <memory>

namespace kernelswap {
namespace {
struct GemvPlan : raw::PlanBase {
  gemv::Launch launch;
};
}  // namespace
}  // namespace kernelswap

extern "C" {

// The plan of one GEMV layer at M rows: `format` as in pick, bf16 (1) or fp16 (0) activations, the
// layouts of python/kernelswap/ops/gemv_layout.py (zeros and bias may be null; formats 5 and 6 read
// the int8 (N, K) weight itself, 16-byte aligned, K % 16 == 0), K, N and w_rows, the weight's
// leading dimension (its tiles, ceil(N / 16), or N for formats 5 and 6); *ws_bytes gets the
// workspace each run needs (0: none). Null on an error.
void* kernelswap_gemv_plan(int format, int group_size, int bf16, const void* w, const void* scales, const void* zeros,
                           const void* bias, void* counters, int64_t M, int64_t K, int64_t N, int64_t w_rows,
                           int device, int64_t* ws_bytes) {
  using namespace kernelswap;
  using namespace kernelswap::gemv;
  const char* op = "kernelswap GEMV plan";
  const bool ok =
      ((format >= kInt4 && format <= kInt8Rows) || raw::fail(op, ": unknown format ", format)) &&
      (format != kInt4 || group_size == 32 || group_size == 64 || group_size == 128 ||
       raw::fail(op, ": group_size must be 32, 64 or 128, got ", group_size)) &&
      ((M >= 1 && M <= kMaxM) || raw::fail(op, ": M=", M, " outside 1..", kMaxM)) &&
      ((K > 0 && K % 8 == 0 && K < (1LL << 31)) ||
       raw::fail(op, ": K=", K, " must be a positive multiple of 8 below 2^31")) &&
      (format == kInt4 || format == kSparse24 || K <= (1LL << 17) ||
       raw::fail(op, ": int8 needs K <= 2^17, got ", K)) &&
      ((N > 0 && N < (1LL << 31) && w_rows == (row_major(format) ? N : ceil_div(N, kTileN))) ||
       raw::fail(op, ": N=", N, " does not match the weight's ", w_rows, row_major(format) ? " rows" : " tiles")) &&
      (!row_major(format) || (K % 16 == 0 && !raw::misaligned(w)) ||
       raw::fail(op, ": an int8 (N, K) weight needs K % 16 == 0 and 16-byte alignment, got K=", K));
  if (!ok) return nullptr;
  GemvPlan* plan = nullptr;
  raw::guarded([&] {
    Args a = fill_args(w, static_cast<const float*>(bias), counters, M, K, N);
    a.scales = scales;
    a.zeros = zeros;
    auto p = std::make_unique<GemvPlan>();
    p->device = device;
    p->launch = plan_launch(pick(format, group_size, bf16 != 0, M), a, device);
    *ws_bytes = p->launch.ws_bytes;
    plan = p.release();
    return 0;
  });
  return plan;
}

// One launch of a plan: x (M, K) and out (M, N) contiguous on the plan's device; ws of the plan's
// ws_bytes (or null when that is 0). Returns 0, raw::kMisaligned (x or out not 16-byte aligned:
// nothing launched) or 1 (the error is in kernelswap_raw_error()).
int kernelswap_gemv_run(const void* plan, const void* x, void* out, void* ws, void* stream) {
  using namespace kernelswap;
  using namespace kernelswap::gemv;
  if (raw::misaligned(x) || raw::misaligned(out)) return raw::kMisaligned;
  const auto* p = static_cast<const GemvPlan*>(plan);
  if (ws == nullptr && p->launch.ws_bytes > 0) return raw::fail("kernelswap GEMV: the plan needs a workspace"), 1;
  return raw::guarded([&] {
    Args a = p->launch.a;
    a.x = x;
    a.out = out;
    a.ws = ws;
    raw::DeviceScope scope(p->device);
    p->launch.l.run(a, p->launch.grid, p->launch.smem, p->launch.pdl, static_cast<cudaStream_t>(stream));
    return 0;
  });
}

}  // extern "C"
