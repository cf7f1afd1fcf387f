"""The weight-only layers' large-M GEMMs of the CUDA extension ("cuda" backend): CUTLASS's Hopper
mixed-input GEMM (csrc/sm90/gemm_mixed_sm90.cuh), which converts the int8 / int4 weight to x's
type in registers inside the mainloop instead of writing a 16-bit copy of it first.

  int8_weight_linear  _C_int8_weight_mm  out = (x @ w_q.T) * w_scale[n] + bias[n]
  int4_linear         _C_int4_mm         w = code * scale + zero per group (groups 64 / 128)

A swapped layer runs them through a raw plan (ops/_raw.py: one foreign call, the CUTLASS kernel
parameters kept between calls); direct op calls go through _C's ops. Registered after the decode
GEMVs (ops/gemv_cuda.py), so those keep the M they serve; in the measured window MIXED_M[op] these
serve, ahead of the Triton GEMMs and dequantize + cuBLAS. bf16 activations only (the one type
instantiated); fp16 and fp32 take the next backend.

int4's scale and zero are (Kp / g, N) fp32 (N contiguous: the mainloop's scale layout), with
zero = -z * s (-8 * s when symmetric), made once per weight buffer by `prepare` (PreparedWeights)
when the layer's buffers are made, moved or loaded. code * s + zero and (code - z) * s are the same
fp32 number (both exact: a 4-bit code times an fp16 scale needs 15 bits of the 24), so the weight
the tensor cores see is the reference's dequantized weight rounded once to x's type.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import _raw
from ._cuda import ALIGN_KN, bias32, device_index, gemm_reason, sm90_reason
from ._prepared import PreparedWeights
from .backend import Preference, Transient, register
from .int4 import SYMMETRIC_ZERO

_DTYPES = (torch.bfloat16,)  # the only x type instantiated (csrc/generate.py): fp16 takes the Triton GEMMs
GROUPS = (64, 128)  # the mainloop's K tile (64) must divide the group

# The M window [from, to) each op's mixed-input GEMM serves (to None: every larger M). H200,
# benchmarks/never_slower.py, graph-replayed, time over bf16 nn.Linear's at 4096x14336 / 8192x28672
# (benchmarks/results/never_slower_mixed.md); "mixed" is the 128-token tile below M = 512 and the
# 256-token one from there (csrc/sm90/gemm_mixed.h kMixedLargeFromM; at 128 the 256 tile took
# 1.41 / 1.59 for W8A16, 1.28 / 1.53 for W4A16, the 128 tile at 512 1.26 / 1.20 and 1.57 / 1.40):
#   M      W8A16 mixed  Triton       torch         W4A16 mixed  Triton       torch
#   32     1.04 / 1.18  0.87 / 0.82                1.05 / 1.17  1.68 / 1.66  (GEMV 1.63 / 1.62)
#   128    0.81 / 0.96  1.19 / 1.36                0.99 / 1.10  1.62 / 1.86
#   512    1.00 / 1.00  1.33 / 1.44                1.12 / 1.15  1.65 / 1.72  2.11 / 2.47
#   2048   1.05 / 0.98  1.30 / 1.31  1.85 / 1.84   1.08 / 1.11  1.62 / 1.62  1.22 / 1.34
#   8192   0.99 / 1.17  1.33 / 1.39  1.21 / 1.21   1.20 / 1.20  1.61 / 1.58  1.04 / 1.11
# (M = 1-8: the GEMVs, 0.35-0.70.) From 32 to 128 (W8A16), 16 to 32 and 2048 to 8192 (W4A16) was
# not swept; the 32 / 128 rows and the 512-8192 rows come from two runs (2026-12-03, 11:41 and 12:08).
# W4A16 starts at 17, right after the GEMV's M (gemv_cuda.GEMV_UP_TO_M = 16), not at the swept 32:
# from 17 to 31 the path after the GEMV was the Triton large-M GEMM, and both it and the mixed GEMM
# run every such M as one token tile (Triton's are 64-256 tokens, the mixed GEMM's 128), so their
# times there are those of M = 32, where the Triton GEMM took 1.68 / 1.66 and the mixed 1.05 / 1.17.
# Not timed at M = 17-31 itself.
MIXED_M = {"int8_weight_linear": (128, None), "int4_linear": (17, 8192)}


_SCALES = PreparedWeights("int4 -> mixed-input GEMM scale / zero")


@functools.lru_cache(maxsize=None)
def _build_reason() -> str | None:
    from .. import _ext
    if not _ext.load():
        return "kernelswap._C is not loaded"
    if not hasattr(torch.ops.kernelswap, "_C_int4_mm"):
        return "kernelswap._C predates the mixed-input GEMMs (csrc/sm90_mixed_ops.cu); rebuild it"
    return None


def _reason(op: str, x: Tensor, k: int, n: int, *tensors: Tensor) -> str | None:
    """The checks both ops share, on x (M, K); the shape rules first (the CPU tests reach them)."""
    if x.dtype not in _DTYPES:
        return f"x is {x.dtype}; the mixed-input GEMMs are built for bfloat16 activations only"
    if k % ALIGN_KN or n % ALIGN_KN:
        return f"K={k} and N={n} must be multiples of {ALIGN_KN} (TMA moves 16-byte rows)"
    if x.device.type != "cuda":
        return "x is not a CUDA tensor"
    why = _build_reason() or gemm_reason(x, k, n, *tensors)
    m, (lo, hi) = x.shape[0], MIXED_M[op]
    if why is None and m < lo:
        return Preference(f"M={m} < {lo}: the decode GEMV / Triton GEMM is faster here (MIXED_M)")
    if why is None and hi is not None and m >= hi:
        return Preference(f"M={m} >= {hi}: dequantize + cuBLAS (torch backend) is faster here (MIXED_M)")
    return why


# ---------------------------------------------------------------- int8_weight_linear (W8A16)
def _w8a16_supports(x, w_q, w_scale, bias):
    return _reason("int8_weight_linear", x, x.shape[1], w_q.shape[0], w_q, w_scale)


def _w8a16_prepare(w_q, w_scale, bias) -> None:
    if w_q.is_cuda:
        bias32(bias)  # the fp32 bias the epilogue reads


def _w8a16_bind(w_q, w_scale, bias):
    mm, b = torch.ops.kernelswap._C_int8_weight_mm.default, bias32(bias)
    return lambda x: mm(x, w_q, w_scale, b)


def _w8a16_raw(x, w_q, w_scale, bias):
    return _raw.mixed_runner(x, _raw.MIXED_INT8_WEIGHT, w_q, None, None, w_scale, bias32(bias), 0, w_q.shape[0],
                             _w8a16_bind(w_q, w_scale, bias))


@register("int8_weight_linear", "cuda", supports=_w8a16_supports, prepare=_w8a16_prepare, bind=_w8a16_bind,
          raw=_w8a16_raw)
def _int8_weight_mm(x, w_q, w_scale, bias):
    return _w8a16_bind(w_q, w_scale, bias)(x)


# ---------------------------------------------------------------- int4_linear (W4A16)
def mixed_scales(scales: Tensor, zeros: Tensor | None) -> tuple[Tensor, Tensor]:
    """(N, G) fp16 scales, (N, G) uint8 zeros or None -> (G, N) fp32 scale and zero, contiguous, with
    code * scale + zero == (code - z) * s exactly in fp32."""
    s = scales.float()
    z = torch.full_like(s, float(SYMMETRIC_ZERO)) if zeros is None else zeros.float()
    return s.t().contiguous(), (-z * s).t().contiguous()


def _sources(w_packed, scales, zeros) -> tuple[Tensor, ...]:
    return tuple(t for t in (w_packed, scales, zeros) if t is not None)


def _int4_weights_reason(w_packed: Tensor, group_size: int) -> str | None:
    if group_size not in GROUPS:
        return f"group_size={group_size}: the mixed-input GEMM serves groups {GROUPS} (its K tile is 64)"
    return None


def _int4_supports(x, w_packed, scales, zeros, group_size, bias):
    kp = w_packed.shape[1] * 2
    if (why := _int4_weights_reason(w_packed, group_size)) is not None:
        return why
    if x.shape[1] != kp:
        return f"K={x.shape[1]} is not the weight's padded K={kp} (the GEMM reads whole groups)"
    why = _reason("int4_linear", x, kp, w_packed.shape[0], w_packed)
    if why is None and not _SCALES.holds(_sources(w_packed, scales, zeros)) and torch.cuda.is_current_stream_capturing():
        return Transient("capturing, and the mixed-input GEMM's scale / zero were not prepared (move the model "
                         "with .to(device) or call kernelswap.prepare(model) before capturing)")
    return why


def _int4_prepare(w_packed, scales, zeros, group_size, bias) -> None:
    if not w_packed.is_cuda or _int4_weights_reason(w_packed, group_size) is not None:
        return
    if w_packed.shape[0] % ALIGN_KN or (w_packed.shape[1] * 2) % ALIGN_KN or _build_reason() is not None or \
            sm90_reason(device_index(w_packed)) is not None:
        return  # the GEMM cannot serve these weights here: no copy
    _SCALES.get(_sources(w_packed, scales, zeros), lambda: mixed_scales(scales, zeros))
    bias32(bias)


def _int4_bind(w_packed, scales, zeros, group_size, bias):
    s, z = _SCALES.get(_sources(w_packed, scales, zeros), lambda: mixed_scales(scales, zeros))
    mm, b = torch.ops.kernelswap._C_int4_mm.default, bias32(bias)
    return lambda x: mm(x, w_packed, s, z, b, group_size)


def _int4_raw(x, w_packed, scales, zeros, group_size, bias):
    s, z = _SCALES.get(_sources(w_packed, scales, zeros), lambda: mixed_scales(scales, zeros))
    return _raw.mixed_runner(x, _raw.MIXED_INT4, w_packed, s, z, None, bias32(bias), group_size, w_packed.shape[0],
                             _int4_bind(w_packed, scales, zeros, group_size, bias))


@register("int4_linear", "cuda", supports=_int4_supports, prepare=_int4_prepare, bind=_int4_bind, raw=_int4_raw)
def _int4_mm(x, w_packed, scales, zeros, group_size, bias):
    return _int4_bind(w_packed, scales, zeros, group_size, bias)(x)
