"""INT8 ops: dynamic per-token activation quantization, W8A8 and W8A16 linear.

Numerics (DESIGN.md):
  quantize_per_token_int8  scale[m] = max|x[m,:]| / 127 (fp32); q = round_half_even(x / scale),
                           clamped to [-127, 127]; an all-zero row has scale 0 and q 0;
                           a NaN in a row makes its scale NaN (and its q 0), so NaN reaches
                           the output instead of vanishing.
  int8_scaled_mm           acc = a @ b.T exact in int32; out = (acc * a_scale[m]) * b_scale[n]
                           + bias[n] in fp32, then cast to out_dtype.
  int8_linear (W8A8)       quantize_per_token_int8(x), then int8_scaled_mm; output x.dtype.
  int8_weight_linear       (W8A16) out = (x @ w_q.T) * w_scale[n] + bias[n], fp32 accumulate,
                           output x.dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks as C
from ._define import op
from .backend import Plan, register


# ---------------------------------------------------------------- quantize_per_token_int8
_check_quantize = C.per_token_check("quantize_per_token_int8")
_QUANTIZE = Plan("quantize_per_token_int8")


@op("quantize_per_token_int8(Tensor x) -> (Tensor, Tensor)", check=_check_quantize)
def quantize_per_token_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., K) float -> (q (..., K) int8, scale (...) float32)."""
    return C.per_token_call(_QUANTIZE, _check_quantize, x)


quantize_per_token_int8.register_fake(C.per_token_fake(_check_quantize, torch.int8))


@register("quantize_per_token_int8", "reference")
def quantize_per_token_ref(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (M, K) -> q (M, K) int8, scale (M,) fp32."""
    xf = x.float()
    amax = xf.abs().amax(dim=1)
    # Divide by a tensor, not a Python number: torch on CUDA turns division by a scalar
    # into multiplication by its reciprocal, which is not the IEEE quotient the kernels use.
    scale = amax / torch.full_like(amax, 127.0)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)  # all-zero row: q = 0 / 1 = 0
    q = torch.round(xf / safe[:, None]).clamp_(-127, 127).nan_to_num_(0.0)
    return q.to(torch.int8), scale


# ---------------------------------------------------------------- int8_scaled_mm
def _check_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype) -> None:
    op = "int8_scaled_mm"
    C.check_dtype(op, "a", a, (torch.int8,))
    C.check_dtype(op, "b", b, (torch.int8,))
    C.check_dim(op, "a", a, 2, "(M, K)")
    C.check_dim(op, "b", b, 2, "(N, K)")
    m, k = a.shape
    n = b.shape[0]
    if b.shape[1] != k:
        raise ValueError(f"kernelswap.{op}: a is (M, K={k}) but b is (N, K={b.shape[1]}); K must match")
    C.check_dtype(op, "a_scale", a_scale, (torch.float32,))
    C.check_shape(op, "a_scale", a_scale, (m,), "(M,)")
    C.check_dtype(op, "b_scale", b_scale, (torch.float32,))
    C.check_shape(op, "b_scale", b_scale, (n,), "(N,)")
    C.check_bias(op, bias, n)
    if out_dtype not in C.FLOAT_DTYPES:
        raise TypeError(f"kernelswap.{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    C.check_same_device(op, a, a_scale=a_scale, b=b, b_scale=b_scale, bias=bias)


_SCALED_MM = Plan("int8_scaled_mm")


@op("int8_scaled_mm(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor? bias, ScalarType out_dtype) -> Tensor")
def int8_scaled_mm(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, bias: Tensor | None,
                   out_dtype: torch.dtype) -> Tensor:
    """a (M, K) int8, a_scale (M,) fp32, b (N, K) int8, b_scale (N,) fp32 -> (M, N) out_dtype."""
    return _SCALED_MM((a, a_scale, b, b_scale, bias, out_dtype), _check_scaled_mm,
                      lambda: (a.contiguous(), a_scale.contiguous(), b.contiguous(), b_scale.contiguous(), bias,
                               out_dtype))


@int8_scaled_mm.register_fake
def _(a, a_scale, b, b_scale, bias, out_dtype):
    _check_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def int_matmul_ref(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) int8 @ b (N, K).T -> (M, N) int32, exact on every device.

    float64 holds every partial sum exactly (|sum| <= K * 127^2 < 2^53); on CPU it is also
    ~9x faster than torch._int_mm (0.098 s vs 0.87 s at 800x384x1536)."""
    return (a.double() @ b.double().t()).to(torch.int32)


def scale_epilogue_ref(acc: Tensor, a_scale: Tensor, b_scale: Tensor, bias: Tensor | None,
                       out_dtype: torch.dtype) -> Tensor:
    """The one epilogue every int8 path matches: (acc * a_scale[m]) * b_scale[n] + bias[n]."""
    out = acc.float() * a_scale[:, None] * b_scale[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


@register("int8_scaled_mm", "reference")
def int8_scaled_mm_ref(a, a_scale, b, b_scale, bias, out_dtype):
    return scale_epilogue_ref(int_matmul_ref(a, b), a_scale, b_scale, bias, out_dtype)


def _int_mm_supports(a, a_scale, b, b_scale, bias, out_dtype):
    m, k = a.shape
    n = b.shape[0]
    if m <= 16 or k % 8 or n % 8 or k < 16:
        return "torch._int_mm needs M > 16, K >= 16 and K, N multiples of 8"
    return None


@register("int8_scaled_mm", "torch", supports=_int_mm_supports)
def _int8_scaled_mm_torch(a, a_scale, b, b_scale, bias, out_dtype):
    return scale_epilogue_ref(torch._int_mm(a, b.t()), a_scale, b_scale, bias, out_dtype)


# ---------------------------------------------------------------- int8_linear (W8A8)
def _check_int8_weight(op: str, x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> None:
    C.check_activation(op, x)
    C.check_dtype(op, "w_q", w_q, (torch.int8,))
    C.check_dim(op, "w_q", w_q, 2, "(N, K)")
    C.check_k(op, x, w_q.shape[1], "w_q")
    C.check_dtype(op, "w_scale", w_scale, (torch.float32,))
    C.check_shape(op, "w_scale", w_scale, (w_q.shape[0],), "(N,)")
    C.check_bias(op, bias, w_q.shape[0])
    C.check_same_device(op, x, w_q=w_q, w_scale=w_scale, bias=bias)


_WEIGHT_PLANS = {name: Plan(name) for name in ("int8_linear", "int8_weight_linear")}


def _int8_weight_op(name: str, x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The body both int8-weight linears share: check, flatten tokens, dispatch, restore dims."""
    y = _WEIGHT_PLANS[name]((x, w_q, w_scale, bias), lambda *a: _check_int8_weight(name, *a),
                            lambda: (C.flatten_tokens(x), w_q.contiguous(), w_scale.contiguous(), bias))
    return C.unflatten_tokens(y, x)


def _int8_weight_fake(name: str):
    def fake(x, w_q, w_scale, bias):
        _check_int8_weight(name, x, w_q, w_scale, bias)
        return x.new_empty((*x.shape[:-1], w_q.shape[0]))

    return fake


def _check_w8a8(x, w_q, w_scale, bias) -> None:
    _check_int8_weight("int8_linear", x, w_q, w_scale, bias)


def _check_w8a16(x, w_q, w_scale, bias) -> None:
    _check_int8_weight("int8_weight_linear", x, w_q, w_scale, bias)


@op("int8_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias) -> Tensor", check=_check_w8a8)
def int8_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """W8A8: x (..., K) float, w_q (N, K) int8, w_scale (N,) fp32, bias (N,) -> (..., N) x.dtype."""
    return _int8_weight_op("int8_linear", x, w_q, w_scale, bias)


int8_linear.register_fake(_int8_weight_fake("int8_linear"))


def dense_int8_weight(w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The (N, K) float weight an int8 layer stands for (its gradient for x flows through it)."""
    return w_q.float() * w_scale.float()[:, None]


int8_linear.register_input_grad(dense_int8_weight)


@register("int8_linear", "reference")
def int8_linear_ref(x, w_q, w_scale, bias):
    q, s = quantize_per_token_ref(x)
    return int8_scaled_mm_ref(q, s, w_q, w_scale, bias, x.dtype)


@register("int8_linear", "torch")
def _int8_linear_torch(x, w_q, w_scale, bias):
    # Eager quantization, then torch._int_mm where its shape rules allow.
    q, s = quantize_per_token_ref(x)
    args = (q, s, w_q, w_scale, bias, x.dtype)
    return (int8_scaled_mm_ref if _int_mm_supports(*args) else _int8_scaled_mm_torch)(*args)


# ---------------------------------------------------------------- int8_weight_linear (W8A16)
@op("int8_weight_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias) -> Tensor", check=_check_w8a16)
def int8_weight_linear(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """W8A16: x (..., K) float, w_q (N, K) int8, w_scale (N,) fp32 -> (..., N) x.dtype."""
    return _int8_weight_op("int8_weight_linear", x, w_q, w_scale, bias)


int8_weight_linear.register_fake(_int8_weight_fake("int8_weight_linear"))
int8_weight_linear.register_input_grad(dense_int8_weight)


@register("int8_weight_linear", "reference")
def int8_weight_linear_ref(x, w_q, w_scale, bias):
    out = (x.float() @ w_q.float().t()) * w_scale
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@register("int8_weight_linear", "torch")
def _int8_weight_linear_torch(x, w_q, w_scale, bias):
    # Dequantize to x.dtype and let cuBLAS accumulate in fp32.
    w = w_q.to(x.dtype) * w_scale.to(x.dtype)[:, None]
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
