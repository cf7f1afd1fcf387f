"""Decode GEMVs of the CUDA extension ("cuda" backend), for M <= GEMV_UP_TO_M[op] tokens (measured crossovers).

  int4_linear         _C_int4_gemv         W4A16, groups 32 / 64 / 128, symmetric or not
  int8_weight_linear  _C_int8_weight_gemv  W8A16, per-channel fp32 scale
  int8_linear         _C_int8_gemv         W8A8, x quantized per token inside the one launch,
                                           bit-exact with the reference
  (both read the layer's int8 (N, K) weight itself where K % 16 == 0: INT8_ROW_MAJOR)
  sparse24_linear     _C_sparse24_gemv     2:4 bf16 / fp16: the kept values and their metadata
                                           streamed (0.56x the dense bytes), expanded in registers
  sparse24_int8_linear _C_sparse24_int8_gemv  2:4 int8, x quantized per token inside, as W8A8

The layers' runners launch them through _C's raw entry points (ops/_raw.py), other calls
through the ops. One templated kernel (csrc/gemv) streams weights in the layouts of
kernelswap.ops.gemv_layout (or, for int8 with K % 16 == 0, the layer's own weight), made once
per weight buffer when the layer's buffers are made,
moved or loaded (`prepare`, through kernelswap.ops.backend.prepare_weights) and kept in
PreparedWeights caches, with the scales in the kernel's order (int4) or as fp32 (int8), an
fp32 bias and the split-K counters. They run on any sm_80+ GPU the build carries code for,
with bf16 / fp16 activations, K a multiple of 8 and a 16-byte aligned x; every other call
falls back to the next backend with the reason. This module registers before
kernelswap.ops.int8_cuda, so at decode sizes these GEMVs are tried before the CUTLASS GEMMs.

A weight's counters are shared by its launches: two GEMV launches on one weight must not run
concurrently on different streams.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _ext
from . import _raw
from . import gemv_layout as L
from ._cuda import bias32, device_index, sm80_code_reason
from ._prepared import PreparedWeights
from .backend import Preference, register

# The GEMVs serve M up to MAX_M when forced; automatically up to GEMV_UP_TO_M[op]. Measured on
# an H200 (2026-12-01, bf16, kernels replayed from a CUDA graph: benchmarks/gemv_quick.py, and
# benchmarks/never_slower.py for M = 32; time / cuBLAS bf16's at K x N = 4096x4096 / 4096x14336 /
# 14336x4096 / 8192x28672): int4 g128 M=16: 1.18 / 0.89 / 1.17 / 0.77, where the Triton GEMM
# after it takes 1.6x at M = 32; M=32: 1.60-1.62 (4096x14336,
# 8192x28672), the Triton GEMM 1.63 there. W8A16 M=4: 0.96 / 0.79 / 0.71 / 0.65, M=16: 1.37 /
# 1.03 / 1.20 / 0.84 against the Triton GEMM's 0.82-0.95 at M = 32. W8A8 M=1: 0.82 / 0.75 /
# 0.70 / 0.59, M=4: 1.22 / 0.94 / 1.07 / 0.81 against the CUTLASS quantize + GEMM's 0.73-0.86
# at M = 1 and 32. M = 2, 3, 5-15 and 17-31 were not measured.
# 2:4 bf16 (2026-12-02, same bench, against the Triton 2:4 GEMV it displaces): M=1: 0.76 / 0.79 /
# 0.72 / 0.61 of cuBLAS (Triton 0.81 / 0.80 / 1.00 / 0.69), M=4: 0.89 / 0.82 / 0.73 / 0.67
# (Triton 0.95 / 1.01 / 0.97 / 0.96), M=8: 0.92 / 0.89 / 0.75 / 0.72 (Triton 1.02 / 1.03 / 1.01
# / 1.00), M=16: 1.22 / 1.08 / 1.18 / 0.84 (Triton 1.09 / 0.98 / 0.99 / 0.97). 2:4-int8 against
# the CUTLASS 2:4-int8 quantize + GEMM: M=1: 0.72 / 0.50 / 0.60 / 0.41 (CUTLASS 1.01 / 0.74 / 1.06
# / 0.72), M=4: 1.02 / 0.69 / 0.88 / 0.53 (1.04 / 0.82 / 1.08 / 0.83), M=8: 1.26 / 0.86 / 1.24 /
# 0.65 (1.01 / 0.83 / 1.03 / 0.74).
# W8A16 again after the Triton GEMM's split-K became one launch (2026-12-04, benchmarks/never_slower.py,
# benchmarks/results/never_slower_w8a16_m1-4.md and never_slower_splitk.md, same four sizes), GEMV /
# Triton: M=1 0.83 / 0.74, 0.63 / 0.73, 0.63 / 0.68, 0.59 / 0.62; M=2 0.93 / 0.73, 0.66 / 0.67, 0.68
# / 0.69, 0.63 / 0.62; M=4 0.93 / 0.72, 0.69 / 0.67, 0.71 / 0.68, 0.65 / 0.60; M=8 0.97 / 0.73, 0.73 /
# 0.68, 0.75 / 0.69, 0.68 / 0.58. So the GEMV keeps M = 1 only (it was 4), 4096x4096 included, where
# Triton is faster under a graph but the GEMV's call costs less host time (13.8 against 16.1 us at
# M = 1 / 16, benchmarks/results/host_time.csv), which eager decode at M = 1 is bound by. M = 3 was
# not measured.
GEMV_UP_TO_M = {"int4_linear": 16, "int8_weight_linear": 1, "int8_linear": 1, "sparse24_linear": 8,
                "sparse24_int8_linear": 4}
MAX_M = 64
ALIGN_K = 8  # x rows are read as 16-byte vectors (W8A8) and 4-byte pairs
MAX_K_INT8 = 1 << 17  # int32 accumulation of K products of 127 * 127 stays exact
_DTYPES = (torch.bfloat16, torch.float16)


class Prepared(NamedTuple):
    w: Tensor | None  # None: the int8 row formats read the layer's own (N, K) weight
    scales: Tensor | None  # None: 2:4
    zeros: Tensor | None
    bias: Tensor | None
    counters: Tensor


_INT4 = PreparedWeights("int4 -> decode GEMV layout")
_W8A16 = PreparedWeights("int8 -> W8A16 decode GEMV layout")
_W8A8 = PreparedWeights("int8 -> W8A8 decode GEMV layout")
_W8A16_ROWS = PreparedWeights("int8 -> W8A16 decode GEMV scales")
_W8A8_ROWS = PreparedWeights("int8 -> W8A8 decode GEMV scales")
_S24 = PreparedWeights("2:4 -> decode GEMV layout")
_S24_INT8 = PreparedWeights("2:4 int8 -> decode GEMV layout")

# The W8A16 / W8A8 GEMVs read the int8 (N, K) weight as the layer holds it (the GEMMs' operand,
# so a layer keeps one copy of its weight: csrc/gemv/gemv_formats_rows.cuh) wherever its rows are
# 16-byte aligned (K % 16 == 0, a contiguous aligned buffer); elsewhere gemv_layout's prepared copy.
# False: the prepared copy everywhere (benchmarks/gemv_quick.py --int8-layout compares the two).
INT8_ROW_MAJOR = True


@functools.lru_cache(maxsize=None)
def _build_reason() -> str | None:
    """Why this process has no GEMVs at all (None: _C carries them)."""
    if not _ext.load():
        return "kernelswap._C is not loaded"
    if not hasattr(torch.ops.kernelswap, "_C_int4_gemv"):
        return "kernelswap._C predates the decode GEMVs (csrc/gemv); rebuild it"
    return None


@functools.lru_cache(maxsize=None)
def _device_reason(index: int) -> str | None:
    """Why the GEMVs cannot run on device `index` (None: they can)."""
    return _build_reason() or sm80_code_reason(index, "the GEMVs' mma.sync")


def _reason(x: Tensor, op: str) -> str | None:
    """The checks every GEMV shares, on x (M, K); cheap ones first (the CPU tests reach them)."""
    m, k = x.shape
    if x.dtype not in _DTYPES:
        return f"x is {x.dtype}; the GEMVs take bfloat16 / float16 activations"
    if k % ALIGN_K:
        return f"K={k} is not a multiple of {ALIGN_K} (the GEMVs read x in aligned vectors)"
    if m > MAX_M:
        return f"M={m} > {MAX_M}: the GEMVs serve decode sizes"
    if (why := _build_reason()) is not None:
        return why
    if x.device.type != "cuda":
        return "x is not a CUDA tensor"
    if x.data_ptr() % 16:
        return "x is not 16-byte aligned (an offset view)"
    why = _device_reason(device_index(x))
    if why is None and m > GEMV_UP_TO_M[op]:
        return Preference(f"M={m} > {GEMV_UP_TO_M[op]}: the GEMMs are faster here")
    return why


def _serves(w: Tensor) -> bool:
    return w.is_cuda and _device_reason(device_index(w)) is None


def _key(*tensors: Tensor | None) -> tuple[Tensor, ...]:
    return tuple(t for t in tensors if t is not None)


# ---------------------------------------------------------------- int4_linear (W4A16)
def _int4_prepared(w_packed, scales, zeros, group_size, bias) -> Prepared:
    def make():
        w, s, z = L.int4_to_gemv(w_packed, scales, zeros, group_size)
        return Prepared(w, s, z, bias32(bias), L.counters(w_packed.shape[0], w_packed.device))
    return _INT4.get(_key(w_packed, scales, zeros, bias), make)


def _int4_prepare(w_packed, scales, zeros, group_size, bias) -> None:
    if _serves(w_packed):
        _int4_prepared(w_packed, scales, zeros, group_size, bias)


def int4_serves_up_to(w_packed: Tensor) -> int:
    """The M up to which the automatic choice sends int4_linear on these weights to the GEMV (0:
    it cannot run here); the GEMV takes every group size, N and K % 8 == 0 the op allows."""
    return GEMV_UP_TO_M["int4_linear"] if _serves(w_packed) else 0


def _int4_supports(x, w_packed, scales, zeros, group_size, bias):
    return _reason(x, "int4_linear")


def _int4_bind(w_packed, scales, zeros, group_size, bias):
    """_int4_gemv as a function of x alone, the prepared layout looked up once (ops/_runner.py)."""
    p, op, n = _int4_prepared(w_packed, scales, zeros, group_size, bias), torch.ops.kernelswap._C_int4_gemv.default, \
        w_packed.shape[0]
    return lambda x: op(x, p.w, p.scales, p.zeros, p.bias, p.counters, group_size, n)


def _int4_raw(x, w_packed, scales, zeros, group_size, bias):
    """_int4_gemv for x's layout through the raw entry points (ops/_raw.py), or None."""
    p = _int4_prepared(w_packed, scales, zeros, group_size, bias)
    return _raw.gemv_runner(x, _raw.GEMV_INT4, group_size, p.w, p.scales, p.zeros, p.bias, p.counters,
                            w_packed.shape[0], _int4_bind(w_packed, scales, zeros, group_size, bias))


@register("int4_linear", "cuda", supports=_int4_supports, prepare=_int4_prepare, bind=_int4_bind, raw=_int4_raw)
def _int4_gemv(x, w_packed, scales, zeros, group_size, bias):
    return _int4_bind(w_packed, scales, zeros, group_size, bias)(x)


# ---------------------------------------------------------------- int8: W8A16 and W8A8
def _int8_rows(w_q: Tensor) -> bool:
    """Whether the int8 GEMVs read w_q itself (INT8_ROW_MAJOR)."""
    return INT8_ROW_MAJOR and w_q.shape[1] % 16 == 0 and w_q.is_contiguous() and w_q.data_ptr() % 16 == 0


def _int8_prepared(activations_int8: bool, w_q, w_scale, bias) -> Prepared:
    rows = _int8_rows(w_q)
    cache = (_W8A8_ROWS if rows else _W8A8) if activations_int8 else (_W8A16_ROWS if rows else _W8A16)

    def make():
        w = None if rows else L.int8_to_gemv(w_q, activations_int8)
        return Prepared(w, w_scale.float().contiguous().clone(), None, bias32(bias),
                        L.counters(w_q.shape[0], w_q.device))
    return cache.get(_key(w_q, w_scale, bias), make)


def _int8_supports_for(op: str):
    def supports(x, w_q, w_scale, bias):
        if x.shape[1] > MAX_K_INT8:
            if op == "int8_linear":
                return f"K={x.shape[1]} > {MAX_K_INT8}: int32 accumulation would no longer be exact"
            return f"K={x.shape[1]} > {MAX_K_INT8}: beyond the K the int8 GEMV layout was written and tested for"
        return _reason(x, op)
    return supports


def _w8a16_prepare(w_q, w_scale, bias) -> None:
    if _serves(w_q):
        _int8_prepared(False, w_q, w_scale, bias)


def _w8a8_prepare(w_q, w_scale, bias) -> None:
    if _serves(w_q):
        _int8_prepared(True, w_q, w_scale, bias)


def _int8_bind(activations_int8: bool, op_name: str):
    def bind(w_q, w_scale, bias):
        p, n = _int8_prepared(activations_int8, w_q, w_scale, bias), w_q.shape[0]
        op, w = getattr(torch.ops.kernelswap, op_name).default, w_q if p.w is None else p.w
        return lambda x: op(x, w, p.scales, p.bias, p.counters, n)
    return bind


def _int8_raw(activations_int8: bool, fmt: int, bind):
    def raw(x, w_q, w_scale, bias):
        p = _int8_prepared(activations_int8, w_q, w_scale, bias)
        w, f = (w_q, fmt + _raw.GEMV_INT8_ROWS - _raw.GEMV_INT8) if p.w is None else (p.w, fmt)
        return _raw.gemv_runner(x, f, 0, w, p.scales, None, p.bias, p.counters, w_q.shape[0], bind(w_q, w_scale, bias))
    return raw


_W8A16_BIND = _int8_bind(False, "_C_int8_weight_gemv")
_W8A8_BIND = _int8_bind(True, "_C_int8_gemv")
_W8A16_RAW = _int8_raw(False, _raw.GEMV_INT8_WEIGHT, _W8A16_BIND)
_W8A8_RAW = _int8_raw(True, _raw.GEMV_INT8, _W8A8_BIND)


@register("int8_weight_linear", "cuda", supports=_int8_supports_for("int8_weight_linear"), prepare=_w8a16_prepare,
          bind=_W8A16_BIND, raw=_W8A16_RAW)
def _int8_weight_gemv(x, w_q, w_scale, bias):
    return _W8A16_BIND(w_q, w_scale, bias)(x)


@register("int8_linear", "cuda", supports=_int8_supports_for("int8_linear"), prepare=_w8a8_prepare,
          bind=_W8A8_BIND, raw=_W8A8_RAW)
def _int8_gemv(x, w_q, w_scale, bias):
    return _W8A8_BIND(w_q, w_scale, bias)(x)


# ---------------------------------------------------------------- 2:4: sparse24_linear, sparse24_int8_linear
@functools.lru_cache(maxsize=None)
def _s24_build_reason() -> str | None:
    if _ext.load() and not hasattr(torch.ops.kernelswap, "_C_sparse24_int8_gemv"):
        return "kernelswap._C predates the 2:4 decode GEMVs; rebuild it"
    return None


def _s24_prepared(values, meta, w_scale, bias) -> Prepared:
    """The GEMV layout of a 2:4 weight (w_scale None: bf16 / fp16 values, else int8)."""
    int8 = w_scale is not None
    op = "sparse24_int8_linear" if int8 else "sparse24_linear"

    def make():
        from .sparse24 import check_meta_valid

        check_meta_valid(op, meta)  # the kernels trust every nibble: checked once, here
        w = L.sparse24_int8_to_gemv(values, meta) if int8 else L.sparse24_to_gemv(values, meta)
        scales = w_scale.float().contiguous().clone() if int8 else None
        return Prepared(w, scales, None, bias32(bias), L.counters(values.shape[0], values.device))
    return (_S24_INT8 if int8 else _S24).get(_key(values, meta, w_scale, bias), make)


def _s24_serves(values) -> bool:
    return _serves(values) and _s24_build_reason() is None


def _s24_prepare(values, meta, bias) -> None:
    if _s24_serves(values) and values.dtype in _DTYPES:
        _s24_prepared(values, meta, None, bias)


def _s24_int8_prepare(values, meta, w_scale, bias) -> None:
    if _s24_serves(values) and values.dtype == torch.int8:
        _s24_prepared(values, meta, w_scale, bias)


def _s24_supports(x, values, meta, bias):
    if values.dtype != x.dtype:
        return f"values are {values.dtype} but x is {x.dtype}; the GEMV multiplies them in one dtype"
    return _reason(x, "sparse24_linear") or _s24_build_reason()


def _s24_int8_supports(x, values, meta, w_scale, bias):
    if x.shape[1] > MAX_K_INT8:
        return f"K={x.shape[1]} > {MAX_K_INT8}: int32 accumulation would no longer be exact"
    return _reason(x, "sparse24_int8_linear") or _s24_build_reason()


def _s24_run(values, meta, w_scale, bias):
    """The 2:4 GEMV as a function of x alone (w_scale None: bf16 / fp16, else int8), the prepared
    layout looked up once."""
    p, n = _s24_prepared(values, meta, w_scale, bias), values.shape[0]
    if w_scale is None:
        op = torch.ops.kernelswap._C_sparse24_gemv.default
        return lambda x: op(x, p.w, p.bias, p.counters, n)
    op = torch.ops.kernelswap._C_sparse24_int8_gemv.default
    return lambda x: op(x, p.w, p.scales, p.bias, p.counters, n)


def _s24_raw_run(x, values, meta, w_scale, bias):
    """_s24_run for x's layout through the raw entry points (ops/_raw.py), or None."""
    p = _s24_prepared(values, meta, w_scale, bias)
    fmt = _raw.GEMV_SPARSE24 if w_scale is None else _raw.GEMV_SPARSE24_INT8
    return _raw.gemv_runner(x, fmt, 0, p.w, p.scales, None, p.bias, p.counters, values.shape[0],
                            _s24_run(values, meta, w_scale, bias))


def _s24_bind(values, meta, bias):
    return _s24_run(values, meta, None, bias)


def _s24_int8_bind(values, meta, w_scale, bias):
    return _s24_run(values, meta, w_scale, bias)


def _s24_raw(x, values, meta, bias):
    return _s24_raw_run(x, values, meta, None, bias)


def _s24_int8_raw(x, values, meta, w_scale, bias):
    return _s24_raw_run(x, values, meta, w_scale, bias)


@register("sparse24_linear", "cuda", supports=_s24_supports, prepare=_s24_prepare, bind=_s24_bind, raw=_s24_raw)
def _sparse24_gemv(x, values, meta, bias):
    return _s24_bind(values, meta, bias)(x)


@register("sparse24_int8_linear", "cuda", supports=_s24_int8_supports, prepare=_s24_int8_prepare,
          bind=_s24_int8_bind, raw=_s24_int8_raw)
def _sparse24_int8_gemv(x, values, meta, w_scale, bias):
    return _s24_int8_bind(values, meta, w_scale, bias)(x)
