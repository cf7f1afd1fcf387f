"""FP8 (e4m3) ops: dynamic per-token activation quantization and W8A8 linear in float8_e4m3fn,
dense and on a 2:4 sparse weight.

The op contract of the "fp8" and "sparse24-fp8" recipes: schema, fake, CPU reference and
gradient. The sm_90a CUTLASS GEMMs serve them on Hopper (kernelswap.ops.fp8_cuda); every
other device runs the reference.

Numerics:
  quantize_per_token_fp8  scale[m] = max|x[m,:]| / 448 (fp32, 448 = the largest e4m3fn value);
                          q = e4m3(x / scale), saturated to +-448 before the cast, rounded to
                          nearest even (torch's cast); an all-zero row has scale 0 and q 0; a NaN
                          in a row makes its scale NaN, so NaN reaches the output.
  fp8_linear (W8A8)       q, s = quantize_per_token_fp8(x); acc = q @ w_q.T summed exactly (every
                          product of two e4m3 values and their sum over K are exact in float64 for
                          K < 2^17) and rounded once to fp32; out = (acc * s[m]) * w_scale[n]
                          + bias[n] in fp32 (the int8 epilogue, kernelswap.ops.int8), x.dtype out.
                          fast_accum=True lets a kernel sum K in a narrower accumulator for speed
                          (on Hopper: FP8 fast accumulation, the tensor cores' own, never promoted
                          into fp32; errors grow with K); the reference is the exact sum either way.
  sparse24_fp8_linear     the same on a 2:4 sparse e4m3 weight in the compressed format of
                          kernelswap.ops.sparse24 (values (N, Kp // 2) float8_e4m3fn, meta).
Weights: kernelswap.packing.quantize_fp8 (per-output-channel scale max|w_n| / 448), then
kernelswap.packing.compress_24 for the sparse op.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks as C
from ._define import op
from .backend import Plan, register
from .int8 import scale_epilogue_ref
from .sparse24 import check_compressed, check_meta_valid, decompress_24_ref

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
MAX_K = 1 << 17  # the reference's float64 sum stays exact below this K


def quantize_fp8_rows(xf: Tensor, scale: Tensor) -> Tensor:
    """fp32 rows / their scale (0 counts as 1), saturated to +-448, cast to e4m3 (round to nearest even)."""
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (xf / safe[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)


# ---------------------------------------------------------------- quantize_per_token_fp8
_check_quantize = C.per_token_check("quantize_per_token_fp8")
_QUANTIZE = Plan("quantize_per_token_fp8")


@op("quantize_per_token_fp8(Tensor x) -> (Tensor, Tensor)", check=_check_quantize)
def quantize_per_token_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., K) float -> (q (..., K) float8_e4m3fn, scale (...) float32)."""
    return C.per_token_call(_QUANTIZE, _check_quantize, x)


quantize_per_token_fp8.register_fake(C.per_token_fake(_check_quantize, FP8))


@register("quantize_per_token_fp8", "reference")
def quantize_per_token_fp8_ref(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (M, K) -> q (M, K) e4m3, scale (M,) fp32."""
    xf = x.float()
    amax = xf.abs().amax(dim=1)
    scale = amax / torch.full_like(amax, FP8_MAX)  # an IEEE quotient, as a kernel computes it
    return quantize_fp8_rows(xf, scale), scale


# ---------------------------------------------------------------- fp8_linear (W8A8)
def _check_k_exact(name: str, k: int) -> None:
    if k >= MAX_K:
        raise ValueError(f"kernelswap.{name}: K={k} >= {MAX_K} is past the K whose sums the "
                         f"reference keeps exact; split the layer")


def _check_scale_bias(name: str, n: int, w_scale: Tensor, bias: Tensor | None) -> None:
    C.check_dtype(name, "w_scale", w_scale, (torch.float32,))
    C.check_shape(name, "w_scale", w_scale, (n,), "(N,)")
    C.check_bias(name, bias, n)


def _check_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, fast_accum: bool = False) -> None:
    name = "fp8_linear"
    if not isinstance(fast_accum, bool):
        raise TypeError(f"kernelswap.{name}: fast_accum must be a bool, got {type(fast_accum).__name__}")
    C.check_activation(name, x)
    C.check_dtype(name, "w_q", w_q, (FP8,))
    C.check_dim(name, "w_q", w_q, 2, "(N, K)")
    C.check_k(name, x, w_q.shape[1], "w_q")
    _check_k_exact(name, w_q.shape[1])
    _check_scale_bias(name, w_q.shape[0], w_scale, bias)
    C.check_same_device(name, x, w_q=w_q, w_scale=w_scale, bias=bias)


_LINEAR = Plan("fp8_linear")


@op("fp8_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias, bool fast_accum=False) -> Tensor",
    check=_check_linear)
def fp8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None, fast_accum: bool = False) -> Tensor:
    """FP8 W8A8: x (..., K) float, w_q (N, K) e4m3, w_scale (N,) fp32, bias (N,) -> (..., N) x.dtype;
    fast_accum: see the module docstring."""
    return C.tokens_call(_LINEAR, _check_linear, x, w_q, w_scale, bias, fast_accum)


fp8_linear.register_fake(C.tokens_fake(_check_linear))


fp8_linear.register_input_grad(lambda w_q, w_scale, bias, fast_accum=False: w_q.float() * w_scale.float()[:, None])


@register("fp8_linear", "reference")
def fp8_linear_ref(x, w_q, w_scale, bias, fast_accum=False):
    q, s = quantize_per_token_fp8_ref(x)
    acc = q.double() @ w_q.double().t()  # exact: see the module docstring
    return scale_epilogue_ref(acc, s, w_scale, bias, x.dtype)


# ---------------------------------------------------------------- sparse24_fp8_linear (2:4 W8A8)
def _check_sparse(x: Tensor, values: Tensor, meta: Tensor, w_scale: Tensor, bias: Tensor | None) -> None:
    name = "sparse24_fp8_linear"
    check_compressed(name, x, values, meta, (FP8,))
    _check_k_exact(name, x.shape[-1])
    _check_scale_bias(name, values.shape[0], w_scale, bias)
    C.check_same_device(name, x, values=values, meta=meta, w_scale=w_scale, bias=bias)


_SPARSE = Plan("sparse24_fp8_linear")


@op("sparse24_fp8_linear(Tensor x, Tensor values, Tensor meta, Tensor w_scale, Tensor? bias) -> Tensor",
    check=_check_sparse)
def sparse24_fp8_linear(x: Tensor, values: Tensor, meta: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """2:4 FP8 W8A8: x (..., K) float, values (N, Kp // 2) e4m3, meta (N, Kp // 8) uint8, w_scale (N,) fp32."""
    return C.tokens_call(_SPARSE, _check_sparse, x, values, meta, w_scale, bias)


sparse24_fp8_linear.register_fake(C.tokens_fake(_check_sparse))


def dense_fp8_weight(values: Tensor, meta: Tensor, k: int) -> Tensor:
    """The (N, k) e4m3 weight a 2:4 e4m3 (values, meta) pair stands for (decompressed in float32,
    which holds every e4m3 value exactly, as torch has no scatter for float8)."""
    return decompress_24_ref(values.float(), meta)[:, :k].to(FP8)


sparse24_fp8_linear.register_input_grad(
    lambda values, meta, w_scale, bias: decompress_24_ref(values.float(), meta) * w_scale.float()[:, None])


@register("sparse24_fp8_linear", "reference")
def sparse24_fp8_linear_ref(x, values, meta, w_scale, bias):
    check_meta_valid("sparse24_fp8_linear", meta)
    return fp8_linear_ref(x, dense_fp8_weight(values, meta, x.shape[1]), w_scale, bias)
