"""W4A16 group-wise int4 (int4_linear) providers.

Baseline besides the dense layer: tinygemm, torch._weight_int4pack_mm (bf16 only, CUDA).
Our asymmetric format maps onto tinygemm's exactly: ours dequantizes
(code - zero) * scale = (code - 8) * scale + (8 - zero) * scale, and tinygemm computes
(code - 8) * scale + zero_tg, so zero_tg = (8 - zero) * scale.
"""
from __future__ import annotations

import torch

from kernelswap import packing

from ..shapes import LinearShape
from . import Case, Provider, register, tensor_bytes
from .linear import DENSE, activation, bias, io_bytes, register_ours, weight

INNER_K_TILES = 8  # tinygemm's widest K tile; needs K % (8 * 16) == 0


def _int4_weights(s: LinearShape, dtype, device) -> tuple:
    q = packing.quantize_int4(weight(s, device), s.group_size)
    return q.packed, q.scales, q.zeros, q.group_size, bias(s, device).to(dtype)


def to_tinygemm(q: packing.Int4Weight, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Our asymmetric Int4Weight -> (codes (N, K // 2) uint8, even k in the HIGH nibble as tinygemm
    wants; scales_and_zeros (K // group, N, 2) dtype) with w = (code - 8) * scale + zero."""
    swapped = ((q.packed & 0x0F) << 4) | (q.packed >> 4)
    scale = q.scales.float()
    zero_tg = (8.0 - q.zeros.float()) * scale
    return swapped.contiguous(), torch.stack((scale, zero_tg), dim=-1).transpose(0, 1).contiguous().to(dtype)


def _tinygemm_weights(s: LinearShape, dtype, device) -> tuple:
    q = packing.quantize_int4(weight(s, device), s.group_size)
    if q.packed.shape[1] * 2 != s.k:
        raise ValueError(f"tinygemm needs K a multiple of the group size {s.group_size}, got K={s.k}")
    codes, scales_zeros = to_tinygemm(q, dtype)
    w_tg = torch.ops.aten._convert_weight_to_int4pack(codes, INNER_K_TILES)
    return w_tg, scales_zeros, bias(s, device).to(dtype)


def _make_tinygemm(s: LinearShape, dtype, device) -> Case:
    if device.type != "cuda":
        raise RuntimeError("tinygemm (_weight_int4pack_mm) baseline is timed on CUDA only")
    group = s.group_size

    def fn(x, w_tg, scales_zeros, b):
        return torch._weight_int4pack_mm(x, w_tg, group, scales_zeros) + b

    def new_args():
        return (activation(s, dtype, device), *_tinygemm_weights(s, dtype, device))

    sample = new_args()
    return Case(fn, new_args, s.flops(), tensor_bytes(*sample[1:]), io_bytes(s, dtype),
                note=f"group {group}, inner_k_tiles {INNER_K_TILES}, bias added after")


register_ours("int4_linear", "linear", _int4_weights)
register("int4_linear", "linear", DENSE)
register("int4_linear", "linear", Provider("tinygemm", "baseline", _make_tinygemm))
