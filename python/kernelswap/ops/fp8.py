"""FP8 (e4m3) ops: dynamic per-token activation quantization and W8A8 linear in float8_e4m3fn.

The op contract of the FP8 recipe (issue "FP8 for Hopper"): schema, fake, CPU reference and
gradient. No fast path is registered yet, so every device runs the reference; there is no
recipe or layer on top until the sm_90a GEMMs exist (a swap must never be slower).

Numerics:
  quantize_per_token_fp8  scale[m] = max|x[m,:]| / 448 (fp32, 448 = the largest e4m3fn value);
                          q = e4m3(x / scale), saturated to +-448 before the cast, rounded to
                          nearest even (torch's cast); an all-zero row has scale 0 and q 0; a NaN
                          in a row makes its scale NaN, so NaN reaches the output.
  fp8_linear (W8A8)       q, s = quantize_per_token_fp8(x); acc = q @ w_q.T summed exactly (every
                          product of two e4m3 values and their sum over K are exact in float64 for
                          K < 2^17) and rounded once to fp32; out = (acc * s[m]) * w_scale[n]
                          + bias[n] in fp32 (the int8 epilogue, kernelswap.ops.int8), x.dtype out.
Weights: kernelswap.packing.quantize_fp8 (per-output-channel scale max|w_n| / 448).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks as C
from ._define import op
from .backend import Plan, register
from .int8 import scale_epilogue_ref

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
def _check_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> None:
    name = "fp8_linear"
    C.check_activation(name, x)
    C.check_dtype(name, "w_q", w_q, (FP8,))
    C.check_dim(name, "w_q", w_q, 2, "(N, K)")
    C.check_k(name, x, w_q.shape[1], "w_q")
    if w_q.shape[1] >= MAX_K:
        raise ValueError(f"kernelswap.{name}: K={w_q.shape[1]} >= {MAX_K} is past the K whose sums the "
                         f"reference keeps exact; split the layer")
    C.check_dtype(name, "w_scale", w_scale, (torch.float32,))
    C.check_shape(name, "w_scale", w_scale, (w_q.shape[0],), "(N,)")
    C.check_bias(name, bias, w_q.shape[0])
    C.check_same_device(name, x, w_q=w_q, w_scale=w_scale, bias=bias)


_LINEAR = Plan("fp8_linear")


@op("fp8_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias) -> Tensor", check=_check_linear)
def fp8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """FP8 W8A8: x (..., K) float, w_q (N, K) e4m3, w_scale (N,) fp32, bias (N,) -> (..., N) x.dtype."""
    return C.tokens_call(_LINEAR, _check_linear, x, w_q, w_scale, bias)


fp8_linear.register_fake(C.tokens_fake(_check_linear))


fp8_linear.register_input_grad(lambda w_q, w_scale, bias: w_q.float() * w_scale.float()[:, None])


@register("fp8_linear", "reference")
def fp8_linear_ref(x, w_q, w_scale, bias):
    q, s = quantize_per_token_fp8_ref(x)
    acc = q.double() @ w_q.double().t()  # exact: see the module docstring
    return scale_epilogue_ref(acc, s, w_scale, bias, x.dtype)
