"""The FP8 ops served by the CUDA extension kernelswap._C ("cuda" backend).

  quantize_per_token_fp8  _C_quantize_per_token_fp8 (any CUDA GPU; before sm_89 the e4m3
                          conversion runs in software, same rounding)
  fp8_linear              _C_quantize_per_token_fp8 + _C_fp8_mm: CUTLASS Hopper e4m3 GEMM
                          (csrc/sm90), fp32 accumulation, scales and bias in the epilogue;
                          fast_accum=True: FP8 fast accumulation from M = 65 (the tensor cores'
                          accumulator is never promoted into fp32 registers; at M <= 64, where
                          the weight read bounds the GEMM, the promoted kernel serves either way)
  sparse24_fp8_linear     _C_quantize_per_token_fp8 + _C_sparse24_fp8_mm (sparse wgmma)

The GEMMs are sm_90a code with bfloat16 output only. Where they cannot serve, `supports` says
why and the reference serves: a float16 / float32 layer; an sm_89 GPU (L4 / L40: FP8 tensor
cores, but no wgmma); sm_80 / sm_86 (no FP8 tensor cores); a build without 9.0a or CUTLASS.
Decode sizes (M <= 64) run the same GEMMs with their small tiles.

The 2:4 layout is made by CUTLASS's int8 compressor on the e4m3 bytes (both are 8-bit
types with one sparse layout; csrc/sm90/gemm_sm90.cuh asserts that at compile time), once
per weight buffer, by the `prepare` hook.
"""
from __future__ import annotations

import functools

import torch

from . import _raw
from ._cuda import bias32, device_index, gemm_reason, sm90_reason
from ._prepared import PreparedWeights
from .backend import register
from .fp8 import FP8, dense_fp8_weight
from .sparse24 import check_meta_valid
from .sparse24_cuda import ALIGN_K_SPARSE_INT8 as ALIGN_K_SPARSE_8BIT
from .sparse24_cuda import _prepare_for, _sparse_reason

OUT_DTYPE = torch.bfloat16  # the one output instantiated (csrc/generate.py)
_OPS = ("_C_quantize_per_token_fp8", "_C_fp8_mm", "_C_sparse24_fp8_mm")


@functools.lru_cache(maxsize=None)
def fp8_gpu_reason(device_index: int) -> str | None:
    """Why the FP8 GEMMs cannot run on this device (None: they can): the GPU, then the build."""
    major, minor = torch.cuda.get_device_capability(device_index)
    if (major, minor) == (8, 9):
        return ("sm_89 (Ada: L4 / L40) has FP8 tensor cores but no wgmma; kernelswap's FP8 GEMMs are "
                "sm_90a code, so the reference serves")
    if major < 9:
        return f"sm_{major}{minor} has no FP8 tensor cores; the reference serves"
    return sm90_reason(device_index) or ops_reason()


def ops_reason() -> str | None:
    """Why this kernelswap._C cannot serve the FP8 ops (an older build without them), or None."""
    missing = [name for name in _OPS if not hasattr(torch.ops.kernelswap, name)]
    if missing:
        return f"this kernelswap._C predates the FP8 ops ({', '.join(missing)} missing); rebuild it"
    if "fast_accum" not in str(torch.ops.kernelswap._C_fp8_mm.default._schema):
        return "this kernelswap._C predates _C_fp8_mm's fast_accum argument; rebuild it"
    return None


def _out_reason(dtype: torch.dtype) -> str | None:
    if dtype != OUT_DTYPE:
        return (f"x is {dtype}; the FP8 GEMMs write bfloat16 only (one output type keeps the build "
                f"short); the reference serves")
    return None


def _run_w8a8(mm, weights: tuple, after: tuple = ()):
    """fn(x) = mm(*quantize_per_token_fp8(x), *weights, x.dtype, *after)."""
    quantize = torch.ops.kernelswap._C_quantize_per_token_fp8.default

    def run(x):
        q, s = quantize(x)
        return mm(q, s, *weights, x.dtype, *after)
    return run


@register("quantize_per_token_fp8", "cuda", supports=lambda x: ops_reason())
def _quantize_cuda(x):
    return torch.ops.kernelswap._C_quantize_per_token_fp8(x)


# ---------------------------------------------------------------- fp8_linear
def _fp8_linear_supports(x, w_q, w_scale, bias, fast_accum=False):
    return (_out_reason(x.dtype) or fp8_gpu_reason(device_index(x))
            or gemm_reason(x, x.shape[1], w_q.shape[0], w_q, w_scale))


def _prepare_dense(w_q, w_scale, bias, fast_accum=False):
    if w_q.is_cuda:
        bias32(bias)  # the fp32 bias the epilogue reads


def _fp8_linear_bind(w_q, w_scale, bias, fast_accum=False):
    return _run_w8a8(torch.ops.kernelswap._C_fp8_mm.default, (w_q, w_scale, bias32(bias)), (fast_accum,))


# Impl.raw per fast_accum: the raw plan kind, and the op-based runner it falls back to.
_RAW = {fast: _raw.dense_linear(_raw.GEMM_FP8_LINEAR_FAST if fast else _raw.GEMM_FP8_LINEAR,
                                lambda w, s, b, fast=fast: _fp8_linear_bind(w, s, b, fast))
        for fast in (False, True)}


def _fp8_linear_raw(x, w_q, w_scale, bias, fast_accum=False):
    return _RAW[fast_accum](x, w_q, w_scale, bias)


@register("fp8_linear", "cuda", supports=_fp8_linear_supports, prepare=_prepare_dense, bind=_fp8_linear_bind,
          raw=_fp8_linear_raw)
def _fp8_linear_cuda(x, w_q, w_scale, bias, fast_accum=False):
    return _fp8_linear_bind(w_q, w_scale, bias, fast_accum)(x)


# ---------------------------------------------------------------- sparse24_fp8_linear
_SPARSE = PreparedWeights("sparse24 fp8 -> CUTLASS sm90 layout")


def _sm90_layout(op: str, values: torch.Tensor, meta: torch.Tensor):
    """(values e4m3, meta) in CUTLASS's sm_90a layout, made once per weight buffer."""
    def make():
        check_meta_valid(op, meta)
        dense = dense_fp8_weight(values, meta, values.shape[1] * 2)
        v, e = torch.ops.kernelswap._C_sparse24_prepare(dense.view(torch.int8))
        return v.view(FP8), e
    return _SPARSE.get((values, meta), make)


def _weights_reason(values) -> str | None:
    kp, n = values.shape[1] * 2, values.shape[0]
    if kp % ALIGN_K_SPARSE_8BIT or n % 16:
        return "shape"
    return fp8_gpu_reason(device_index(values))


def _sparse_supports(x, values, meta, w_scale, bias):
    if x.shape[1] % ALIGN_K_SPARSE_8BIT:
        return (f"K={x.shape[1]} is not a multiple of {ALIGN_K_SPARSE_8BIT}: the 8-bit 2:4 GEMM reads 16-byte "
                f"rows of K/2 compressed values; the reference serves")
    return _out_reason(x.dtype) or fp8_gpu_reason(device_index(x)) or _sparse_reason(x, values, meta, w_scale)


def _sparse_bind(values, meta, w_scale, bias):
    v, e = _sm90_layout("sparse24_fp8_linear", values, meta)
    return _run_w8a8(torch.ops.kernelswap._C_sparse24_fp8_mm.default, (v, e, w_scale, bias32(bias)))


@register("sparse24_fp8_linear", "cuda", supports=_sparse_supports, bind=_sparse_bind,
          raw=_raw.sparse_linear(_raw.GEMM_SPARSE24_FP8, lambda v, m: _sm90_layout("sparse24_fp8_linear", v, m),
                                 _sparse_bind),
          prepare=_prepare_for("sparse24_fp8_linear", _weights_reason, _sm90_layout))
def _sparse24_fp8_linear_cuda(x, values, meta, w_scale, bias):
    return _sparse_bind(values, meta, w_scale, bias)(x)
