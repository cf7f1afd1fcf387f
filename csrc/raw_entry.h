// The raw entry points of kernelswap._C: plain C functions that the swapped layers' per-layout
// runners call (python/kernelswap/ops/_raw.py: the runs through csrc/py_entry.cpp's Python functions,
// the plans through ctypes), so an eager call launches its
// kernels without a trip through the PyTorch dispatcher (a stable-ABI op call cost ~11 us of
// host time on the H200 machine, half of what nn.Linear costs in all).
//
// Each family makes a plan once per layer and input layout (its checks, the kernel choice and
// every fixed argument) and runs it per call on (x, out, scratch, stream), where the caller
// allocates out and the scratch the plan asked for through torch, as the op entry points do.
// No C++ exception crosses into the caller: a failure returns nonzero and leaves its message
// for kernelswap_raw_error().
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <exception>
#include <sstream>

namespace kernelswap::raw {

// What a run returns when x or out is not 16-byte aligned: the caller takes the op path instead.
constexpr int kMisaligned = 2;

void set_error(const char* what);  // csrc/ext.cpp

// The plans of every family: kernelswap_raw_free deletes any of them.
struct PlanBase {
  virtual ~PlanBase() = default;
  int device = 0;
};

// The raw plans check their arguments without throwing: what a stable-ABI build against torch
// 2.11's headers does with a thrown exception crashed the process on the H200 machine, even
// caught here. fail(parts...) keeps the message and returns false, for `if (!ok) return fail(...)`.
template <class... A>
bool fail(const A&... parts) {
  std::ostringstream o;
  (o << ... << parts);
  set_error(o.str().c_str());
  return false;
}

// fn() with every exception turned into a return code (1) and a message (for the failures the
// checks cannot foresee: a CUTLASS or launch error).
template <class Fn>
int guarded(Fn&& fn) noexcept {
  try {
    return fn();
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("kernelswap._C: unknown C++ exception");
  }
  return 1;
}

// Make `device` current for the scope (a layer on cuda:1 called while cuda:0 is current).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    cudaGetDevice(&prev_);
    if (prev_ != device) cudaSetDevice(device);
    else prev_ = -1;
  }
  ~DeviceScope() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }

 private:
  int prev_ = -1;
};

inline bool misaligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 != 0; }

}  // namespace kernelswap::raw
