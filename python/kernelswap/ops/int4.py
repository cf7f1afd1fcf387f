"""W4A16 group-wise int4 linear.

Weight format (made by kernelswap.packing.quantize_int4):
  w_packed  (N, Kp // 2) uint8   two 4-bit codes a byte: the low nibble holds even k,
                                  the high nibble odd k. Kp = K rounded up to group_size;
                                  the padding codes dequantize to exactly 0.
  scales    (N, Kp // group_size) float16
  zeros     (N, Kp // group_size) uint8 in [0, 15] (asymmetric), or None (symmetric: 8)
  w[n, k] = (code[n, k] - zero[n, k // group_size]) * scale[n, k // group_size]

Numerics: out = x @ w[:, :K].T + bias with fp32 accumulation, output x.dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks as C
from ._define import op
from .backend import Plan, register

GROUP_SIZES = (32, 64, 128)
SYMMETRIC_ZERO = 8


def unpack_int4(packed: Tensor) -> Tensor:
    """(N, Kp // 2) uint8 -> (N, Kp) uint8 codes in [0, 15] (low nibble first)."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4_ref(w_packed: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int) -> Tensor:
    """The padded float32 weight (N, Kp) that the packed form stands for."""
    n = w_packed.shape[0]
    codes = unpack_int4(w_packed).float().reshape(n, -1, group_size)
    zero = zeros.float()[..., None] if zeros is not None else float(SYMMETRIC_ZERO)
    return ((codes - zero) * scales.float()[..., None]).reshape(n, -1)


def _check(x, w_packed, scales, zeros, group_size, bias) -> None:
    op = "int4_linear"
    C.check_activation(op, x)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"kernelswap.{op}: group_size must be one of {GROUP_SIZES}, got {group_size}")
    C.check_dtype(op, "w_packed", w_packed, (torch.uint8,))
    C.check_dim(op, "w_packed", w_packed, 2, "(N, Kp // 2)")
    n, kp = w_packed.shape[0], w_packed.shape[1] * 2
    if kp % group_size:
        raise ValueError(f"kernelswap.{op}: w_packed holds Kp={kp} codes a row, not a multiple of "
                         f"group_size={group_size}; repack with kernelswap.packing.quantize_int4, "
                         f"which pads K to the group size")
    C.check_dtype(op, "scales", scales, (torch.float16,))
    C.check_shape(op, "scales", scales, (n, kp // group_size), "(N, Kp // group_size)")
    if zeros is not None:
        C.check_dtype(op, "zeros", zeros, (torch.uint8,))
        C.check_shape(op, "zeros", zeros, (n, kp // group_size), "(N, Kp // group_size)")
    C.check_k_padded(op, x, kp, group_size, "w_packed")
    C.check_bias(op, bias, n)
    C.check_same_device(op, x, w_packed=w_packed, scales=scales, zeros=zeros, bias=bias)


_PLAN = Plan("int4_linear")


@op("int4_linear(Tensor x, Tensor w_packed, Tensor scales, Tensor? zeros, int group_size, Tensor? bias) -> Tensor",
    check=_check)
def int4_linear(x: Tensor, w_packed: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int,
                bias: Tensor | None) -> Tensor:
    """W4A16: x (..., K) float -> (..., N) x.dtype. See the module docstring for the format."""
    y = _PLAN((x, w_packed, scales, zeros, group_size, bias), _check,
              lambda: (C.flatten_tokens(x), w_packed.contiguous(), scales.contiguous(),
                       None if zeros is None else zeros.contiguous(), group_size, bias))
    return C.unflatten_tokens(y, x)


@int4_linear.register_fake
def _(x, w_packed, scales, zeros, group_size, bias):
    _check(x, w_packed, scales, zeros, group_size, bias)
    return x.new_empty((*x.shape[:-1], w_packed.shape[0]))


int4_linear.register_input_grad(lambda w_packed, scales, zeros, group_size, bias:
                                dequantize_int4_ref(w_packed, scales, zeros, group_size))


@register("int4_linear", "reference")
def int4_linear_ref(x, w_packed, scales, zeros, group_size, bias):
    w = dequantize_int4_ref(w_packed, scales, zeros, group_size)[:, : x.shape[1]]
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


# ------------------------------------------------------------------ "torch" backend (CUDA)
# Two implementations, tried in this order (kernelswap.ops.int4_triton decides which M
# reaches them, by the measured table beside its thresholds; before both, the "cuda"
# backend's decode GEMV, ops/gemv_cuda.py, takes M <= GEMV_UP_TO_M where it can run):
#   tinygemm        torch._weight_int4pack_mm, bf16 at small M (ops/int4_tinygemm.py)
#   dequant+cuBLAS  one dequantize pass to x.dtype, then F.linear: large M, and every
#                   call no faster kernel serves (fp32 activations, fp16 past the GEMM...)
from . import int4_tinygemm  # noqa: E402

register("int4_linear", "torch", supports=int4_tinygemm.supports, prepare=int4_tinygemm.prepare,
         bind=int4_tinygemm.tinygemm_bind)(int4_tinygemm.tinygemm_linear)


def dequantize_int4_to(w_packed: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int, k: int,
                       dtype: torch.dtype) -> Tensor:
    """(N, k) `dtype` weight, equal to dequantize_int4_ref(...)[:, :k].to(dtype) bit for bit.

    On CUDA one Triton pass (kernels/w4a16_dequant.py: reads the packed bytes once, writes
    x.dtype; 106.7 us for a 4096 x 14336 weight on an H100, where the reference composition
    below took ~800 us). Elsewhere, or without Triton, that reference composition (fp32
    (N, Kp) intermediate, then the cast)."""
    if w_packed.device.type == "cuda":
        try:
            from kernelswap.kernels.w4a16_dequant import w4a16_dequant
        except ImportError:  # no Triton: the reference path below is still right
            pass
        else:
            return w4a16_dequant(w_packed, scales, zeros, group_size, k, dtype)
    return dequantize_int4_ref(w_packed, scales, zeros, group_size)[:, :k].to(dtype)


@register("int4_linear", "torch")
def _int4_linear_torch(x, w_packed, scales, zeros, group_size, bias):
    # Dequantize once to x.dtype, then cuBLAS (fp32 accumulation): the large-M path. The
    # dense weight lives for this call only (caching it would undo the 4x memory saving).
    w = dequantize_int4_to(w_packed, scales, zeros, group_size, x.shape[1], x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
