"""Pieces every linear op family shares: weights, activations, our op, the dense baseline.

Every linear case carries a bias (TARGETS.md P1 counts "scales + bias" end to end), and
every provider of an op applies it, fused or not: the layer being replaced needs it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

import kernelswap.ops

from ..shapes import LinearShape
from . import Case, Provider, register, tensor_bytes

OUR_BACKENDS = (None, "cuda", "triton")  # None: the automatic dispatcher (what users get)


def weight(s: LinearShape, device) -> torch.Tensor:
    """(N, K) fp32 with the scale of a trained layer; never zeros."""
    return torch.randn(s.n, s.k, device=device) / math.sqrt(s.k)


def bias(s: LinearShape, device) -> torch.Tensor:
    return torch.randn(s.n, device=device) * 0.1


def activation(s: LinearShape, dtype, device) -> torch.Tensor:
    return torch.randn(s.m, s.k, device=device, dtype=dtype)


def io_bytes(s: LinearShape, dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return (s.m * s.k + s.m * s.n) * size


def served_by(op: str, args: tuple) -> str:
    """Which backend the automatic dispatcher picks for these (already 2-D) arguments."""
    from kernelswap.ops import backend

    try:
        return backend.choose(op, args[0].device, *args).backend
    except Exception as e:  # noqa: BLE001 - the timing will surface the same error
        return f"none ({type(e).__name__})"


MakeWeights = Callable[[LinearShape, torch.dtype, torch.device], tuple]


def register_ours(op: str, family: str, make_weights: MakeWeights) -> None:
    """ours-auto / ours-cuda / ours-triton for a linear op called as op(x, *make_weights(...)).

    make_weights returns the op's arguments after x, in schema order (bias last)."""
    def make(s: LinearShape, dtype, device) -> Case:
        fn = getattr(kernelswap.ops, op)  # the public op, as the nn modules call it

        def new_args():
            return (activation(s, dtype, device), *make_weights(s, dtype, device))

        sample = new_args()
        return Case(fn, new_args, s.flops(), tensor_bytes(*sample[1:]), io_bytes(s, dtype),
                    note=f"auto dispatch -> {served_by(op, sample)}")

    for b in OUR_BACKENDS:
        register(op, family, Provider(f"ours-{b or 'auto'}", "ours", make, backend=b))


def make_dense(s: LinearShape, dtype, device) -> Case:
    """The layer being replaced: F.linear in x.dtype (cuBLAS on the GPU)."""
    def new_args():
        return activation(s, dtype, device), weight(s, device).to(dtype), bias(s, device).to(dtype)

    sample = new_args()
    return Case(F.linear, new_args, s.flops(), tensor_bytes(*sample[1:]), io_bytes(s, dtype), note="cuBLAS")


DENSE = Provider("torch-dense", "baseline", make_dense)


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager per-token symmetric int8 quantization, written as a user would (no kernelswap)."""
    scale = x.float().abs().amax(dim=1, keepdim=True) / 127.0
    q = torch.round(x.float() / scale.clamp(min=1e-12)).clamp(-127, 127).to(torch.int8)
    return q, scale


def int_mm_linear(x, w_q, w_scale, b):
    """Eager W8A8: quantize x, torch._int_mm (cuBLASLt int8, needs M > 16), scales and bias in fp32."""
    q, s = quantize_rows_int8(x)
    acc = torch._int_mm(q, w_q.t())
    return (acc.float() * s * w_scale + b).to(x.dtype)


def compiled(fn: Callable) -> Callable:
    """torch.compile with the defaults a user would pick (compiles on the first call, in warm-up)."""
    return torch.compile(fn, dynamic=False)
