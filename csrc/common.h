// Shared helpers for kernelswap's CUDA extension. Everything here goes through
// PyTorch's stable ABI (torch/csrc/stable), so one build loads on torch 2.11-2.14.
#pragma once

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cuda_runtime.h>

#include <cstring>

// setup.py passes -DKERNELSWAP_WITH_CUTLASS=1 when it finds the CUTLASS headers; without
// them the CUTLASS GEMMs are left out and their entry points refuse every call (check_device).
#ifndef KERNELSWAP_WITH_CUTLASS
#define KERNELSWAP_WITH_CUTLASS 0
#endif

namespace kernelswap {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// What a family of CUTLASS GEMMs needs of the build and of the GPU.
struct GpuNeed {
  const char* gemms;       // what a build without CUTLASS lacks ("the sm_90a GEMMs")
  const char* build_arch;  // an arch the build must hold ("9.0a"), or nullptr for any
  int min_sm, max_sm;      // compute capabilities served, major * 10 + minor
  const char* gpu;         // the GPU named in the error ("an sm_90 (Hopper) GPU")
};

// On a build without CUTLASS or without the arch's code, or on a GPU the kernels were not
// written for, say so rather than launch a kernel that traps.
inline void check_device(const char* op, int dev, const GpuNeed& need) {
  STD_TORCH_CHECK(KERNELSWAP_WITH_CUTLASS, op, ": kernelswap._C was built without CUTLASS (pip install "
                  "nvidia-cutlass, then rebuild); ", need.gemms, " are not in this build");
  STD_TORCH_CHECK(need.build_arch == nullptr || std::strstr(KERNELSWAP_ARCHS, need.build_arch) != nullptr, op,
                  ": kernelswap._C was built for \"", KERNELSWAP_ARCHS, "\", without ", need.build_arch,
                  "; rebuild with TORCH_CUDA_ARCH_LIST including ", need.build_arch);
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  const int sm = major * 10 + minor;
  STD_TORCH_CHECK(sm >= need.min_sm && sm <= need.max_sm, op, ": needs ", need.gpu, "; device ", dev, " is sm_",
                  major, minor);
}
inline void check_device(const char* op, const Tensor& x, const GpuNeed& need) {
  check_device(op, x.get_device_index(), need);
}

// The stream PyTorch is issuing work on for this tensor's device.
inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

// Check the last launch; a kernel that failed to launch must not pass silently.
#define KS_CHECK_LAUNCH()                                                        \
  do {                                                                           \
    cudaError_t err_ = cudaGetLastError();                                       \
    STD_TORCH_CHECK(err_ == cudaSuccess, "kernelswap: CUDA launch failed: ",      \
                    cudaGetErrorString(err_));                                   \
  } while (0)

}  // namespace kernelswap
