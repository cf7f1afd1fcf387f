"""conv_bn_act providers: ours, eager conv -> bn -> act, BN-folded cuDNN, torch.compile.

Inputs are channels_last (NHWC), as DESIGN.md prefers and as the model benchmarks run.
BatchNorm statistics are random but sane (var in [0.5, 1.5]), and eval-mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kernelswap.ops
from kernelswap import packing
from kernelswap.ops.activations import apply_activation

from ..shapes import ConvShape
from . import Case, Provider, register, tensor_bytes
from .linear import OUR_BACKENDS, compiled, served_by

BN_EPS = 1e-5


def _x(s: ConvShape, dtype, device) -> torch.Tensor:
    x = torch.randn(s.batch, s.c_in, s.hw, s.hw, device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last)


def _residual(s: ConvShape, dtype, device) -> torch.Tensor | None:
    if not s.residual:
        return None
    r = torch.randn(s.batch, s.c_out, s.out_hw, s.out_hw, device=device, dtype=dtype)
    return r.contiguous(memory_format=torch.channels_last)


def _conv_bn(s: ConvShape, device) -> tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]:
    conv = torch.nn.Conv2d(s.c_in, s.c_out, s.kernel, s.stride, s.padding, groups=s.groups, bias=False)
    bn = torch.nn.BatchNorm2d(s.c_out, eps=BN_EPS)
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
    return conv.to(device).eval(), bn.to(device).eval()


def _io_bytes(s: ConvShape, dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    out = s.batch * s.c_out * s.out_hw**2
    return (s.batch * s.c_in * s.hw**2 + out * (2 if s.residual else 1)) * size


def _folded_args(s: ConvShape, dtype, device) -> tuple:
    conv, bn = _conv_bn(s, device)
    w, b = packing.fold_bn(conv.weight.detach(), None, bn)
    return _x(s, dtype, device), w.to(dtype).contiguous(memory_format=torch.channels_last), b.to(dtype), \
        _residual(s, dtype, device)


def _make_ours(s: ConvShape, dtype, device) -> Case:
    op = kernelswap.ops.conv_bn_act  # the public op, as ConvBNAct2d calls it
    stride, pad, dil = [s.stride] * 2, [s.padding] * 2, [1, 1]

    def fn(x, w, b, r):
        return op(x, w, b, stride, pad, dil, s.groups, s.activation, r)

    sample = _folded_args(s, dtype, device)
    x, w, b, r = sample
    served = served_by("conv_bn_act", (x, w, b, stride, pad, dil, s.groups, s.activation, r))
    note = f"{s.layer}; auto dispatch -> {served}"
    return Case(fn, lambda: _folded_args(s, dtype, device), s.flops(), tensor_bytes(w, b), _io_bytes(s, dtype),
                note=note)


def _eager_fn(s: ConvShape):
    def fn(x, w, mean, var, gamma, beta, r):
        y = F.conv2d(x, w, None, s.stride, s.padding, 1, s.groups)
        y = F.batch_norm(y, mean, var, gamma, beta, False, 0.0, BN_EPS)
        if r is not None:
            y = y + r
        return apply_activation(y, s.activation)

    return fn


def _make_eager(compile_: bool):
    def make(s: ConvShape, dtype, device) -> Case:
        def new_args():
            conv, bn = _conv_bn(s, device)
            conv, bn = conv.to(dtype), bn.to(dtype)
            w = conv.weight.detach().contiguous(memory_format=torch.channels_last)
            return (_x(s, dtype, device), w, bn.running_mean, bn.running_var, bn.weight.detach(),
                    bn.bias.detach(), _residual(s, dtype, device))

        sample = new_args()
        fn = compiled(_eager_fn(s)) if compile_ else _eager_fn(s)
        what = "torch.compile(conv -> bn -> act)" if compile_ else "cuDNN conv, then bn, then act"
        return Case(fn, new_args, s.flops(), tensor_bytes(*sample[1:6]), _io_bytes(s, dtype),
                    note=f"{s.layer}; {what}")

    return make


def _make_folded(s: ConvShape, dtype, device) -> Case:
    def fn(x, w, b, r):
        y = F.conv2d(x, w, b, s.stride, s.padding, 1, s.groups)
        if r is not None:
            y = y + r
        return apply_activation(y, s.activation)

    sample = _folded_args(s, dtype, device)
    return Case(fn, lambda: _folded_args(s, dtype, device), s.flops(), tensor_bytes(*sample[1:3]),
                _io_bytes(s, dtype), note=f"{s.layer}; cuDNN conv with BN folded, then act")


for _b in OUR_BACKENDS:
    register("conv_bn_act", "conv", Provider(f"ours-{_b or 'auto'}", "ours", _make_ours, backend=_b))
register("conv_bn_act", "conv", Provider("eager", "baseline", _make_eager(False)))
register("conv_bn_act", "conv", Provider("bn-folded", "baseline", _make_folded))
register("conv_bn_act", "conv", Provider("compile", "baseline", _make_eager(True), slow=True))
