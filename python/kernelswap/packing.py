"""Weight transforms done once at swap time: quantize, pack, prune, compress, fold.

Pure torch, no kernels. Every transform has its inverse (or a dequantize) here, and
the formats are the ones documented in kernelswap.ops (int8, int4, sparse24, conv).
Weights are (N, K) = (out_features, in_features), as in nn.Linear.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops.fp8 import FP8_MAX, quantize_fp8_rows
from .ops.int4 import GROUP_SIZES, SYMMETRIC_ZERO, dequantize_int4_ref, unpack_int4
from .ops.sparse24 import K_MULTIPLE as SPARSE_K_MULTIPLE
from .ops.sparse24 import decompress_24_ref

FP16_MAX = torch.finfo(torch.float16).max
FP16_TINY = 2.0**-24  # smallest fp16 subnormal: no non-zero scale rounds to 0


def _check_weight(fn: str, w: Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"kernelswap.packing.{fn}: weight must be 2-D (N, K), got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"kernelswap.packing.{fn}: weight must be floating point, got {w.dtype}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"kernelswap.packing.{fn}: weight holds NaN or Inf; fix the layer before swapping")


def _round_up(k: int, multiple: int) -> int:
    return math.ceil(k / multiple) * multiple


# ---------------------------------------------------------------- int8, per output channel
def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) float -> (w_q (N, K) int8, w_scale (N,) fp32), symmetric, scale = max|w_n| / 127."""
    _check_weight("quantize_int8", w)
    wf = w.float()
    scale = wf.abs().amax(dim=1) / 127.0
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(wf / safe[:, None]).clamp_(-127, 127).to(torch.int8), scale


def dequantize_int8(w_q: Tensor, w_scale: Tensor) -> Tensor:
    return w_q.float() * w_scale[:, None]


# ---------------------------------------------------------------- fp8 (e4m3), per output channel
def quantize_fp8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) float -> (w_q (N, K) float8_e4m3fn, w_scale (N,) fp32), scale = max|w_n| / 448,
    saturated to +-448 and rounded to nearest even (kernelswap.ops.fp8's numerics)."""
    _check_weight("quantize_fp8", w)
    wf = w.float()
    amax = wf.abs().amax(dim=1)
    scale = amax / torch.full_like(amax, FP8_MAX)
    return quantize_fp8_rows(wf, scale), scale


# ---------------------------------------------------------------- int4, group-wise
class Int4Weight(NamedTuple):
    packed: Tensor  # (N, Kp // 2) uint8
    scales: Tensor  # (N, Kp // group_size) fp16
    zeros: Tensor | None  # (N, Kp // group_size) uint8, None when symmetric
    group_size: int
    in_features: int  # the true K (Kp is K padded to group_size)


def pack_int4(codes: Tensor) -> Tensor:
    """(N, Kp) codes in [0, 15] -> (N, Kp // 2) uint8, even k in the low nibble."""
    if codes.shape[1] % 2:
        raise ValueError(f"kernelswap.packing.pack_int4: need an even number of codes a row, got {codes.shape[1]}")
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def quantize_int4(w: Tensor, group_size: int = 128, symmetric: bool = False) -> Int4Weight:
    """(N, K) float -> Int4Weight. K is zero-padded up to a multiple of group_size.

    asymmetric: each group maps [min(w, 0), max(w, 0)] onto codes 0..15 with an integer
                zero point, so 0 (and the padding) is exact.
    symmetric:  code = round(w / scale) + 8 with scale = max|w| / 7, zero point 8.
    """
    _check_weight("quantize_int4", w)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"kernelswap.packing.quantize_int4: group_size must be one of {GROUP_SIZES}, "
                         f"got {group_size}")
    n, k = w.shape
    kp = _round_up(k, group_size)
    wf = F.pad(w.float(), (0, kp - k)).reshape(n, kp // group_size, group_size)
    if symmetric:
        scale = wf.abs().amax(dim=-1) / 7.0
    else:
        lo, hi = wf.amin(dim=-1).clamp(max=0), wf.amax(dim=-1).clamp(min=0)
        scale = (hi - lo) / 15.0
    if bool((scale > FP16_MAX).any()):
        raise ValueError("kernelswap.packing.quantize_int4: a group's scale exceeds float16's range "
                         f"({float(scale.max()):.3g}); this weight cannot be stored as int4 with fp16 scales")
    scale = torch.where(scale == 0, torch.ones_like(scale), scale.clamp(min=FP16_TINY))
    scales = scale.to(torch.float16)
    s = scales.float()[..., None]  # quantize against the stored scale, so dequantize matches
    if symmetric:
        zeros = None
        codes = torch.round(wf / s).clamp_(-8, 7) + SYMMETRIC_ZERO
    else:
        zero = torch.round(-lo / scales.float()).clamp_(0, 15)
        zeros = zero.to(torch.uint8)
        codes = (torch.round(wf / s) + zero[..., None]).clamp_(0, 15)
    return Int4Weight(pack_int4(codes.reshape(n, kp)), scales, zeros, group_size, k)


def dequantize_int4(q: Int4Weight) -> Tensor:
    """Int4Weight -> (N, K) float32."""
    return dequantize_int4_ref(q.packed, q.scales, q.zeros, q.group_size)[:, : q.in_features]


# ---------------------------------------------------------------- 2:4 structured sparsity
def prune_24(w: Tensor) -> Tensor:
    """Keep the 2 largest |w| of every 4 consecutive weights along K; zero the rest.

    A ragged last group (K not a multiple of 4) counts its missing entries as zeros."""
    _check_weight("prune_24", w)
    n, k = w.shape
    kp = _round_up(k, 4)
    groups = F.pad(w, (0, kp - k)).reshape(n, kp // 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(n, kp)[:, :k]


def is_24_sparse(w: Tensor) -> bool:
    """True when every group of 4 along K (zero-padded) holds at most 2 non-zeros."""
    n, k = w.shape
    groups = F.pad(w, (0, _round_up(k, 4) - k)).reshape(n, -1, 4)
    return bool(((groups != 0).sum(dim=-1) <= 2).all())


def compress_24(w: Tensor) -> tuple[Tensor, Tensor]:
    """2:4-sparse (N, K) -> (values (N, Kp // 2) w.dtype, meta (N, Kp // 8) uint8); Kp = K up to 8.

    Raises if any group of 4 holds more than 2 non-zeros (prune with prune_24 first).
    Float or int8 weights; the format is documented in kernelswap.ops.sparse24."""
    if w.dim() != 2:
        raise ValueError(f"kernelswap.packing.compress_24: weight must be 2-D (N, K), got {tuple(w.shape)}")
    n, k = w.shape
    kp = _round_up(k, SPARSE_K_MULTIPLE)
    groups = F.pad(w, (0, kp - k)).reshape(n, kp // 4, 4)
    nonzero = groups != 0
    counts = nonzero.sum(dim=-1)
    if bool((counts > 2).any()):
        row, grp = (counts > 2).nonzero()[0].tolist()
        raise ValueError(f"kernelswap.packing.compress_24: weight is not 2:4 sparse ({int((counts > 2).sum())} "
                         f"groups of 4 hold more than 2 non-zeros; first at row {row}, columns "
                         f"{4 * grp}..{4 * grp + 3}); prune it with kernelswap.packing.prune_24 first")
    # Prefer non-zero positions, then the lowest index; keep the two in ascending order.
    position = torch.arange(4, device=w.device)
    key = nonzero.to(torch.int64) * 8 + (3 - position)
    idx = key.topk(2, dim=-1).indices.sort(dim=-1).values
    values = groups.gather(-1, idx).reshape(n, kp // 2)
    nibble = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)  # (N, Kp // 4)
    meta = nibble[:, 0::2] | (nibble[:, 1::2] << 4)
    return values.contiguous(), meta.contiguous()


def decompress_24(values: Tensor, meta: Tensor, in_features: int | None = None) -> Tensor:
    """Inverse of compress_24: (values, meta) -> dense (N, K)."""
    dense = decompress_24_ref(values, meta)
    return dense if in_features is None else dense[:, :in_features]


# ---------------------------------------------------------------- BatchNorm folding
def _bn_factor(bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("kernelswap.packing.fold_bn: the BatchNorm has no running statistics "
                         "(track_running_stats=False); it cannot be folded")
    # detached: folded weights are inference constants, not part of the BatchNorm's autograd graph
    var = bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    return gamma / torch.sqrt(var + bn.eps), beta


def fold_bn(weight: Tensor, bias: Tensor | None, bn) -> tuple[Tensor, Tensor]:
    """Conv weight (C_out, ...) and bias, eval-mode BatchNorm -> folded (weight, bias).

    conv(x, w') + b' == bn(conv(x, w) + b) with w' = w * g / sqrt(var + eps) and
    b' = (b - mean) * g / sqrt(var + eps) + beta; computed in float64, returned in w.dtype,
    detached from autograd (a trainable BatchNorm's affine parameters do not make the
    folded weights require grad, which would send every op call through autograd)."""
    if bn.num_features != weight.shape[0]:
        raise ValueError(f"kernelswap.packing.fold_bn: BatchNorm has {bn.num_features} features but the conv "
                         f"has {weight.shape[0]} output channels")
    factor, beta = _bn_factor(bn)
    b = bias.double() if bias is not None else torch.zeros_like(factor)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w_folded = weight.double() * factor.reshape(shape)
    b_folded = (b - bn.running_mean.double()) * factor + beta
    return w_folded.to(weight.dtype), b_folded.to(weight.dtype)


def unfold_bn(weight: Tensor, bias: Tensor, bn) -> tuple[Tensor, Tensor]:
    """Inverse of fold_bn: recover the conv's own weight and bias from the folded ones."""
    factor, beta = _bn_factor(bn)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w = weight.double() / factor.reshape(shape)
    b = (bias.double() - beta) / factor + bn.running_mean.double()
    return w.to(weight.dtype), b.to(weight.dtype)


__all__ = [
    "Int4Weight", "compress_24", "decompress_24", "dequantize_int4", "dequantize_int8", "fold_bn",
    "is_24_sparse", "pack_int4", "prune_24", "quantize_int4", "quantize_int8", "unfold_bn", "unpack_int4",
]
