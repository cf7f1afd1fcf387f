"""The int8 ops served by the CUDA extension kernelswap._C ("cuda" backend).

  quantize_per_token_int8  _C_quantize_per_token_int8 (any CUDA GPU)
  int8_scaled_mm           _C_int8_mm: CUTLASS Hopper int8 GEMM (csrc/sm90), fused scale/bias epilogue
  int8_linear              _C_quantize_per_token_int8 + _C_int8_mm

The GEMM is sm_90a code; `supports` says why a call cannot be served (GPU, build, dtype,
shape, alignment) so the dispatcher falls back before the extension would raise. At decode
sizes the GEMVs of ops/gemv_cuda.py (registered first) serve int8_linear before these.
"""
from __future__ import annotations

import torch

from ._cuda import bias32, gemm_reason, out_reason
from . import _raw
from .backend import register


@register("quantize_per_token_int8", "cuda")
def _quantize_cuda(x):
    return torch.ops.kernelswap._C_quantize_per_token_int8(x)


def _scaled_mm_supports(a, a_scale, b, b_scale, bias, out_dtype):
    return out_reason(out_dtype) or gemm_reason(a, a.shape[1], b.shape[0], b, a_scale, b_scale)


@register("int8_scaled_mm", "cuda", supports=_scaled_mm_supports)
def _int8_scaled_mm_cuda(a, a_scale, b, b_scale, bias, out_dtype):
    return torch.ops.kernelswap._C_int8_mm(a, a_scale, b, b_scale, bias32(bias), out_dtype)


def _int8_linear_supports(x, w_q, w_scale, bias):
    return out_reason(x.dtype) or gemm_reason(x, x.shape[1], w_q.shape[0], w_q, w_scale)


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
