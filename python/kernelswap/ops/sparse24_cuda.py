"""The 2:4 sparse ops served by the CUDA extension kernelswap._C ("cuda" backend).

  sparse24_linear       _C_sparse24_mm: CUTLASS Hopper 2:4 GEMM (sparse wgmma, csrc/sm90)
  sparse24_int8_linear  _C_quantize_per_token_int8 + _C_sparse24_int8_mm
  sparse24_linear       _C_sparse24_mm_sm80: CUTLASS Ampere 2:4 GEMM (mma.sp, csrc/sm80), sm_80 / 86 / 89
  sparse24_int8_linear  _C_quantize_per_token_int8 + _C_sparse24_int8_mm_sm80

The sm_90a GEMMs are tried first; the *_sm80 ones run on any GPU from sm_80 and serve where
the sm_90a ones cannot (an Ampere or Ada GPU, or a build without 9.0a). Sparse weights are
converted once per weight buffer from the public format (kernelswap.ops.sparse24) to each
kernel's layout (_C_sparse24_prepare for sm_90a, kernelswap.ops.sparse24_sm80 for sm_80)
by the `prepare` hooks when the layer's buffers are made, moved or loaded, and kept in a
PreparedWeights cache.
"""
from __future__ import annotations

import torch

from . import _raw, sparse24_cslt, sparse24_sm80
from ._cuda import (ALIGN_KN, OUT_DTYPES, aligned, bias32, device_index, gemm_reason, out_reason, sm80_reason,
                    sm90_reason)
from ._prepared import PreparedWeights
from .backend import Preference, register
from .sparse24 import check_meta_valid, decompress_24_ref

# int8 2:4: the compressed values (K / 2 per row) must fill 16-byte rows too (CUTLASS's
# sparse mainloop refuses K = 16 or 208 on the H100).
ALIGN_K_SPARSE_INT8 = 32

_SPARSE = PreparedWeights("sparse24 -> CUTLASS sm90 layout")
_SPARSE_SM80 = PreparedWeights("sparse24 -> CUTLASS sm80 layout")


def _prepared(op: str, values: torch.Tensor, meta: torch.Tensor, k: int):
    """(values, meta) in CUTLASS's layout, made once per weight buffer: check the
    metadata, decompress to dense on the GPU, run CUTLASS's compressor."""
    def make():
        check_meta_valid(op, meta)
        dense = decompress_24_ref(values, meta)[:, :k].contiguous()
        return torch.ops.kernelswap._C_sparse24_prepare(dense)
    return _SPARSE.get((values, meta), make)


def _prepare_for(op: str, reason, layout):
    """prepare(values, meta, ..., bias) for `op` (backend.register): the layout made by
    layout(op, values, meta) and the fp32 bias, where reason(values) says the kernel can serve
    these weights. Weights whose true K is below Kp (K not a multiple of 8) get a layout the
    kernel then declines; every LLM layer shape has K = Kp."""
    def prepare(values, meta, *rest):
        if not values.is_cuda or reason(values) is not None:
            return
        layout(op, values, meta)
        bias32(rest[-1])
    return prepare


def _sm90_weights_reason(values) -> str | None:
    kp, n = values.shape[1] * 2, values.shape[0]
    if kp % ALIGN_KN or n % ALIGN_KN:
        return "shape"
    if values.dtype == torch.int8 and kp % ALIGN_K_SPARSE_INT8:
        return "shape"
    if values.dtype != torch.int8 and values.dtype not in OUT_DTYPES:
        return "dtype"
    return sm90_reason(device_index(values))


def _sm90_layout(op, values, meta):
    return _prepared(op, values, meta, values.shape[1] * 2)


def _sparse_reason(x, values, meta, *read_directly: torch.Tensor) -> str | None:
    # values and meta are not read by the GEMM (their prepared copies are), so only x and
    # `read_directly` (w_scale) must be aligned.
    k, n = x.shape[1], values.shape[0]
    if values.shape[1] * 2 != k:
        return f"x has K={k} but values hold Kp={values.shape[1] * 2} (padded K); the kernel needs K = Kp"
    return gemm_reason(x, k, n, *read_directly)


# At M <= this, the Triton 2:4 GEMV (read values + metadata, expand in registers) beat the
# CUTLASS sparse GEMM on the H100 (bf16, 8192x28672: 113 vs 150 us at M = 1, 129 vs 139 us at
# M = 16; benchmarks/results/bench.csv). The int8 2:4 GEMM stays faster there (84.6 vs 131 us).
SPARSE24_TRITON_UP_TO_M = 16


def _sparse24_supports(x, values, meta, bias):
    if x.dtype not in OUT_DTYPES:
        return f"x is {x.dtype}; the sparse tensor cores take bfloat16 / float16"
    if values.dtype != x.dtype:
        return f"values are {values.dtype} but x is {x.dtype}; the tensor cores multiply one dtype"
    why = _sparse_reason(x, values, meta)
    if why is None and x.shape[0] <= SPARSE24_TRITON_UP_TO_M:
        return Preference(f"M={x.shape[0]} <= {SPARSE24_TRITON_UP_TO_M}: the Triton 2:4 GEMV is faster here")
    return why or sparse24_cslt.preference(x, values)  # cuSPARSELt from CSLT_FROM_M tokens on


def _sparse24_bind(values, meta, bias):
    v, e = _sm90_layout("sparse24_linear", values, meta)
    mm, b = torch.ops.kernelswap._C_sparse24_mm.default, bias32(bias)
    return lambda x: mm(x, v, e, b)


def _sparse24_int8_bind(values, meta, w_scale, bias):
    v, e = _sm90_layout("sparse24_int8_linear", values, meta)
    quantize, mm, b = (torch.ops.kernelswap._C_quantize_per_token_int8.default,
                       torch.ops.kernelswap._C_sparse24_int8_mm.default, bias32(bias))

    def run(x):
        q, s = quantize(x)
        return mm(q, s, v, e, w_scale, b, x.dtype)
    return run


@register("sparse24_linear", "cuda", supports=_sparse24_supports, bind=_sparse24_bind,
          raw=_raw.sparse_linear(_raw.GEMM_SPARSE24, lambda v, m: _sm90_layout("sparse24_linear", v, m),
                                 _sparse24_bind),
          prepare=_prepare_for("sparse24_linear", _sm90_weights_reason, _sm90_layout))
def _sparse24_linear_cuda(x, values, meta, bias):
    return _sparse24_bind(values, meta, bias)(x)


def _sparse24_int8_supports(x, values, meta, w_scale, bias):
    if x.shape[1] % ALIGN_K_SPARSE_INT8:
        return (f"K={x.shape[1]} is not a multiple of {ALIGN_K_SPARSE_INT8}: the int8 2:4 GEMM reads 16-byte "
                f"rows of K/2 compressed values")
    return out_reason(x.dtype) or _sparse_reason(x, values, meta, w_scale)


@register("sparse24_int8_linear", "cuda", supports=_sparse24_int8_supports, bind=_sparse24_int8_bind,
          raw=_raw.sparse_linear(_raw.GEMM_SPARSE24_INT8, lambda v, m: _sm90_layout("sparse24_int8_linear", v, m),
                                 _sparse24_int8_bind),
          prepare=_prepare_for("sparse24_int8_linear", _sm90_weights_reason, _sm90_layout))
def _sparse24_int8_linear_cuda(x, values, meta, w_scale, bias):
    return _sparse24_int8_bind(values, meta, w_scale, bias)(x)


# ---------------------------------------------------------------- sm_80+ (mma.sp)
def _sm80_shape_reason(x, values) -> str | None:
    n, rows = values.shape[0], sparse24_sm80.row_block(values.dtype)
    if n % rows:
        return f"N={n} is not a multiple of {rows} (the Ampere GEMM's metadata row groups)"
    if not aligned(x):
        return "x is not 16-byte aligned (an offset view); the Ampere GEMM reads 16-byte vectors"
    return None


def _prepared_sm80(op: str, values: torch.Tensor, meta: torch.Tensor):
    """(values, meta) in the Ampere GEMM's layout, made once per weight buffer."""
    def make():
        check_meta_valid(op, meta)
        return sparse24_sm80.prepare(values, meta)
    return _SPARSE_SM80.get((values, meta), make)


def _sparse24_sm80_supports(x, values, meta, bias):
    if x.dtype not in OUT_DTYPES:
        return f"x is {x.dtype}; the sparse tensor cores take bfloat16 / float16"
    if values.dtype != x.dtype:
        return f"values are {values.dtype} but x is {x.dtype}; the tensor cores multiply one dtype"
    return _sm80_shape_reason(x, values) or sm80_reason(device_index(x))


def _sm80_weights_reason(values) -> str | None:
    if values.shape[0] % sparse24_sm80.row_block(values.dtype):
        return "shape"
    if values.dtype != torch.int8 and values.dtype not in OUT_DTYPES:
        return "dtype"
    return sm80_reason(device_index(values))


@register("sparse24_linear", "cuda", supports=_sparse24_sm80_supports,
          prepare=_prepare_for("sparse24_linear", _sm80_weights_reason, lambda op, v, m: _prepared_sm80(op, v, m)))
def _sparse24_linear_sm80(x, values, meta, bias):
    v, e = _prepared_sm80("sparse24_linear", values, meta)
    return torch.ops.kernelswap._C_sparse24_mm_sm80(x, v, e, bias32(bias))


def _sparse24_int8_sm80_supports(x, values, meta, w_scale, bias):
    return (out_reason(x.dtype) or _sm80_shape_reason(x, values)
            or (None if aligned(w_scale) else "w_scale is not 16-byte aligned")
            or sm80_reason(device_index(x)))


@register("sparse24_int8_linear", "cuda", supports=_sparse24_int8_sm80_supports,
          prepare=_prepare_for("sparse24_int8_linear", _sm80_weights_reason, lambda op, v, m: _prepared_sm80(op, v, m)))
def _sparse24_int8_linear_sm80(x, values, meta, w_scale, bias):
    v, e = _prepared_sm80("sparse24_int8_linear", values, meta)
    q, s = torch.ops.kernelswap._C_quantize_per_token_int8(x)
    return torch.ops.kernelswap._C_sparse24_int8_mm_sm80(q, s, v, e, w_scale, bias32(bias), x.dtype)
