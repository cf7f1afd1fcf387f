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

namespace kernelswap {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

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
