"""Conv2d with BatchNorm folded in, fused with bias, residual add and activation.

  out = act(conv2d(x, weight, stride, padding, dilation, groups) + bias[c] + residual)

`weight` and `bias` already carry the folded BatchNorm (kernelswap.packing.fold_bn).
The residual (same shape as the output) is added before the activation, as in a
ResNet block. Accumulation in fp32; output x.dtype, in x's memory format
(channels_last in, channels_last out).

This file holds the schema, the fake and the reference; the torch backend (cuDNN in three
ways, chosen by timing) is ops/conv_torch.py, the Triton one ops/conv_triton.py.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks as C
from ._define import op
from .activations import ACTIVATIONS, apply_activation
from .backend import Plan, register


def output_memory_format(x: Tensor) -> torch.memory_format:
    """channels_last when x is channels_last (and not also plainly contiguous)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def output_shape(x: Tensor, weight: Tensor, stride, padding, dilation) -> tuple[int, int, int, int]:
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return n, c_out, ho, wo


def _pair(op: str, name: str, v: Sequence[int], minimum: int) -> None:
    if len(v) != 2 or any(int(i) < minimum for i in v):
        raise ValueError(f"kernelswap.{op}: {name} must be two ints >= {minimum}, got {list(v)}")


def _check(x, weight, bias, stride, padding, dilation, groups, activation, residual) -> None:
    op = "conv_bn_act"
    C.check_dtype(op, "x", x, C.FLOAT_DTYPES)
    C.check_dim(op, "x", x, 4, "(N, C, H, W)")
    C.check_dtype(op, "weight", weight, C.FLOAT_DTYPES)
    C.check_dim(op, "weight", weight, 4, "(C_out, C_in // groups, kH, kW)")
    _pair(op, "stride", stride, 1)
    _pair(op, "padding", padding, 0)
    _pair(op, "dilation", dilation, 1)
    c_in, c_out = x.shape[1], weight.shape[0]
    if groups < 1 or c_in % groups or c_out % groups:
        raise ValueError(f"kernelswap.{op}: groups={groups} must divide both in channels ({c_in}) "
                         f"and out channels ({c_out})")
    if weight.shape[1] * groups != c_in:
        raise ValueError(f"kernelswap.{op}: x has {c_in} channels but weight expects "
                         f"{weight.shape[1]} x groups={groups} = {weight.shape[1] * groups}")
    C.check_bias(op, bias, c_out)
    if activation not in ACTIVATIONS:
        raise ValueError(f"kernelswap.{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    shape = output_shape(x, weight, stride, padding, dilation)
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"kernelswap.{op}: input {tuple(x.shape)} is too small for a "
                         f"{tuple(weight.shape[2:])} kernel with padding {list(padding)}, "
                         f"dilation {list(dilation)}")
    if residual is not None:
        C.check_dtype(op, "residual", residual, C.FLOAT_DTYPES)
        C.check_shape(op, "residual", residual, shape, "(the output's shape)")
    C.check_same_device(op, x, weight=weight, bias=bias, residual=residual)


_PLAN = Plan("conv_bn_act")


@op("conv_bn_act(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups, "
    "str activation, Tensor? residual) -> Tensor", check=_check)
def conv_bn_act(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int, activation: str, residual: Tensor | None) -> Tensor:
    """x (N, C, H, W) -> (N, C_out, H_out, W_out) x.dtype. See the module docstring."""
    return _PLAN((x, weight, bias, stride, padding, dilation, groups, activation, residual), _check,
                 lambda: (x, weight, bias, list(stride), list(padding), list(dilation), groups, activation, residual))


@conv_bn_act.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, activation, residual):
    _check(x, weight, bias, stride, padding, dilation, groups, activation, residual)
    shape = output_shape(x, weight, stride, padding, dilation)
    return x.new_empty(shape).contiguous(memory_format=output_memory_format(x))


@register("conv_bn_act", "reference")
def conv_bn_act_ref(x, weight, bias, stride, padding, dilation, groups, activation, residual):
    y = F.conv2d(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding, dilation,
                 groups)
    if residual is not None:
        y = y + residual.float()
    y = apply_activation(y, activation)
    return y.to(x.dtype).contiguous(memory_format=output_memory_format(x))


def shape_key(x, weight, bias, stride, padding, dilation, groups, activation, residual) -> tuple:
    """What a measured choice between conv implementations depends on."""
    return (x.device.index, x.dtype, tuple(x.shape), x.stride(), tuple(weight.shape), weight.dtype,
            tuple(stride), tuple(padding), tuple(dilation), groups, activation, bias is None,
            None if residual is None else (residual.dtype, residual.stride()))


conv_bn_act.register_grad_of(conv_bn_act_ref)
