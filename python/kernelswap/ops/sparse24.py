"""2:4 structured-sparse linear: fp16/bf16 values, or int8 values with int8 activations.

Compressed weight format (made by kernelswap.packing.compress_24):
  values  (N, Kp // 2)  the kept weights, two per group of four along K, in k order.
  meta    (N, Kp // 8)  uint8: one nibble per group of four, the low nibble for the even
                        group; a nibble holds the two kept positions i0 < i1 (each 0..3)
                        as i0 | i1 << 2.
  Kp = K rounded up to a multiple of 8; padded columns are zero.

Numerics: sparse24_linear       out = x @ W[:, :K].T + bias, fp32 accumulation, x.dtype.
          sparse24_int8_linear  x quantized per token (quantize_per_token_int8); int32
                                accumulation; the int8_scaled_mm epilogue; x.dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks as C
from ._define import op
from .backend import Plan, register
from .int8 import int_matmul_ref, quantize_per_token_ref, scale_epilogue_ref

K_MULTIPLE = 8
# The six valid nibbles: i0 < i1.
_VALID_NIBBLES = sorted(i0 | i1 << 2 for i0 in range(4) for i1 in range(4) if i0 < i1)


def meta_indices(meta: Tensor) -> Tensor:
    """(N, Kp // 8) uint8 -> (N, Kp // 4, 2) int64 kept positions within each group."""
    nibbles = torch.stack((meta & 0x0F, meta >> 4), dim=-1).reshape(meta.shape[0], -1)
    return torch.stack((nibbles & 3, nibbles >> 2), dim=-1).long()


def check_meta_valid(op: str, meta: Tensor) -> None:
    """Every nibble must name two distinct positions in order; costs one pass over meta.

    Skipped while a CUDA stream is capturing a graph: the check reads its verdict back to the
    host, which capture forbids. An invalid meta captured that way is not reported (its groups
    decompress with a position named twice); the next eager call reports it."""
    if meta.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    nibbles = torch.stack((meta & 0x0F, meta >> 4), dim=-1)
    ok = torch.isin(nibbles, torch.tensor(_VALID_NIBBLES, dtype=meta.dtype, device=meta.device))
    if not bool(ok.all()):
        bad = int((~ok).sum())
        raise ValueError(f"kernelswap.{op}: meta is not 2:4 metadata ({bad} groups name a position twice "
                         f"or out of order); build values and meta with kernelswap.packing.compress_24 "
                         f"from a 2:4-pruned weight (kernelswap.packing.prune_24)")


def decompress_24_ref(values: Tensor, meta: Tensor) -> Tensor:
    """values (N, Kp // 2), meta (N, Kp // 8) -> dense (N, Kp) with zeros at pruned positions."""
    n, half = values.shape
    idx = meta_indices(meta)
    dense = values.new_zeros((n, half // 2, 4))
    dense.scatter_(2, idx, values.reshape(n, half // 2, 2))
    return dense.reshape(n, half * 2)


def check_compressed(op: str, x: Tensor, values: Tensor, meta: Tensor, value_dtypes) -> None:
    C.check_activation(op, x)
    C.check_dtype(op, "values", values, value_dtypes)
    C.check_dim(op, "values", values, 2, "(N, Kp // 2)")
    n, kp = values.shape[0], values.shape[1] * 2
    if kp % K_MULTIPLE:
        raise ValueError(f"kernelswap.{op}: values holds Kp={kp} columns, not a multiple of {K_MULTIPLE}; "
                         f"build it with kernelswap.packing.compress_24, which pads K")
    C.check_dtype(op, "meta", meta, (torch.uint8,))
    C.check_shape(op, "meta", meta, (n, kp // K_MULTIPLE), "(N, Kp // 8)")
    C.check_k_padded(op, x, kp, K_MULTIPLE, "values")


# ---------------------------------------------------------------- sparse24_linear
def _check_float(x, values, meta, bias) -> None:
    op = "sparse24_linear"
    check_compressed(op, x, values, meta, C.FLOAT_DTYPES)
    C.check_bias(op, bias, values.shape[0])
    C.check_same_device(op, x, values=values, meta=meta, bias=bias)


_FLOAT_PLAN = Plan("sparse24_linear")


@op("sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor", check=_check_float)
def sparse24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., K) float -> (..., N) x.dtype. See the module docstring for the format."""
    return C.tokens_call(_FLOAT_PLAN, _check_float, x, values, meta, bias)


sparse24_linear.register_fake(C.tokens_fake(_check_float))


sparse24_linear.register_input_grad(lambda values, meta, bias: decompress_24_ref(values, meta).float())


@register("sparse24_linear", "reference")
def sparse24_linear_ref(x, values, meta, bias):
    check_meta_valid("sparse24_linear", meta)
    w = decompress_24_ref(values, meta)[:, : x.shape[1]].float()
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@register("sparse24_linear", "torch")
def _sparse24_linear_torch(x, values, meta, bias):
    # Decompress to dense x.dtype, then cuBLAS: what the sparse layer replaced.
    w = decompress_24_ref(values.to(x.dtype), meta)[:, : x.shape[1]]
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


# ---------------------------------------------------------------- sparse24_int8_linear
def _check_int8(x, values, meta, w_scale, bias) -> None:
    op = "sparse24_int8_linear"
    check_compressed(op, x, values, meta, (torch.int8,))
    C.check_dtype(op, "w_scale", w_scale, (torch.float32,))
    C.check_shape(op, "w_scale", w_scale, (values.shape[0],), "(N,)")
    C.check_bias(op, bias, values.shape[0])
    C.check_same_device(op, x, values=values, meta=meta, w_scale=w_scale, bias=bias)


_INT8_PLAN = Plan("sparse24_int8_linear")


@op("sparse24_int8_linear(Tensor x, Tensor values, Tensor meta, Tensor w_scale, Tensor? bias) -> Tensor",
    check=_check_int8)
def sparse24_int8_linear(x: Tensor, values: Tensor, meta: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """2:4 W8A8: x (..., K) float, values (N, Kp // 2) int8, w_scale (N,) fp32 -> (..., N) x.dtype."""
    return C.tokens_call(_INT8_PLAN, _check_int8, x, values, meta, w_scale, bias)


sparse24_int8_linear.register_fake(C.tokens_fake(_check_int8))


sparse24_int8_linear.register_input_grad(
    lambda values, meta, w_scale, bias: decompress_24_ref(values, meta).float() * w_scale.float()[:, None])


@register("sparse24_int8_linear", "reference")
def sparse24_int8_linear_ref(x, values, meta, w_scale, bias):
    check_meta_valid("sparse24_int8_linear", meta)
    q, s = quantize_per_token_ref(x)
    w_q = decompress_24_ref(values, meta)[:, : x.shape[1]]
    return scale_epilogue_ref(int_matmul_ref(q, w_q.contiguous()), s, w_scale, bias, x.dtype)
