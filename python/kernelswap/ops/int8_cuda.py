"""The int8 ops served by the CUDA extension kernelswap._C ("cuda" backend).

  quantize_per_token_int8  _C_quantize_per_token_int8 (any CUDA GPU)
  int8_scaled_mm           _C_int8_mm: CUTLASS Hopper int8 GEMM (csrc/sm90), fused scale/bias epilogue
  int8_linear              _C_quantize_per_token_int8 + _C_int8_mm

The GEMM is sm_90a code; `supports` says why a call cannot be served (GPU, build, dtype,
shape, alignment) so the dispatcher falls back before the extension would raise. At decode
sizes the GEMVs of ops/gemv_cuda.py (registered first) serve int8_linear before these, and
the GEMM declines M <= INT8_TRITON_UP_TO_M on large weights to the Triton one (measured faster
there).
"""
from __future__ import annotations

import torch

from ._cuda import bias32, gemm_reason, out_reason
from . import _raw
from .backend import Preference, register


@register("quantize_per_token_int8", "cuda")
def _quantize_cuda(x):
    return torch.ops.kernelswap._C_quantize_per_token_int8(x)


def _scaled_mm_supports(a, a_scale, b, b_scale, bias, out_dtype):
    return out_reason(out_dtype) or gemm_reason(a, a.shape[1], b.shape[0], b, a_scale, b_scale)


@register("int8_scaled_mm", "cuda", supports=_scaled_mm_supports)
def _int8_scaled_mm_cuda(a, a_scale, b, b_scale, bias, out_dtype):
    return torch.ops.kernelswap._C_int8_mm(a, a_scale, b, b_scale, bias32(bias), out_dtype)


# At M <= INT8_TRITON_UP_TO_M (past the GEMV's M), Triton's quantize + int8 GEMM take less GPU
# time than the CUTLASS one on an H200 (2026-12-02, kernels replayed from a CUDA graph,
# benchmarks/gemv_quick.py; us, Triton / CUTLASS at K x N = 4096x4096 / 4096x14336 / 14336x4096 /
# 8192x28672): M=4: 12.1/15.2, 26.1/29.2, 26.7/40.1, 65.1/99.9; M=16: 13.8/14.0, 27.4/29.6,
# 28.9/37.5, 65.8/93.0 (at M = 64 CUTLASS is ahead on three of the four). But a swapped layer's
# Triton path costs more host time per call (43 against 25-31 us at M = 16,
# benchmarks/overhead_quick.py), which an eager call pays wherever the GPU work is shorter, so
# the preference holds only for weights of INT8_TRITON_FROM_NK elements or more (8192x28672:
# 65 against 93 us; at 14336x4096 the two tie in eager code). M = 17-63 was not measured.
INT8_TRITON_UP_TO_M = 16
INT8_TRITON_FROM_NK = 1 << 26


def _int8_linear_supports(x, w_q, w_scale, bias):
    why = out_reason(x.dtype) or gemm_reason(x, x.shape[1], w_q.shape[0], w_q, w_scale)
    if why is None and x.shape[0] <= INT8_TRITON_UP_TO_M and w_q.numel() >= INT8_TRITON_FROM_NK:
        return Preference(f"M={x.shape[0]} <= {INT8_TRITON_UP_TO_M} on a {w_q.shape[0]}x{w_q.shape[1]} weight: "
                          f"the Triton quantize + GEMM is faster here")
    return why


def _prepare_bias(w_q, w_scale, bias):
    if w_q.is_cuda:
        bias32(bias)  # the fp32 bias the epilogue reads


def _int8_linear_bind(w_q, w_scale, bias):
    quantize, mm, b = (torch.ops.kernelswap._C_quantize_per_token_int8.default, torch.ops.kernelswap._C_int8_mm.default,
                       bias32(bias))

    def run(x):
        q, s = quantize(x)
        return mm(q, s, w_q, w_scale, b, x.dtype)
    return run


@register("int8_linear", "cuda", supports=_int8_linear_supports, prepare=_prepare_bias, bind=_int8_linear_bind,
          raw=_raw.dense_linear(_raw.GEMM_INT8_LINEAR, _int8_linear_bind))
def _int8_linear_cuda(x, w_q, w_scale, bias):
    return _int8_linear_bind(w_q, w_scale, bias)(x)
