"""conv_bn_act's "torch" backend: cuDNN on the BN-folded weight, in three ways.

  _conv_bn_act_cudnn_fused  cuDNN's fused conv + bias (+ residual add) + ReLU
  _conv_then_epilogue       cuDNN conv without the bias, then bias, residual and activation
                            in place (the shape of eager conv -> BatchNorm -> act)
  _conv_bn_act_torch        cuDNN conv with the bias, then residual and activation

Which is fastest depends on the layer, so the first two are timed per shape on first use
against whatever the dispatcher would run if they declined (ops/_measure.py); the decision
is the ordinary `supports` of each registered implementation, so kernelswap.ops.backend
makes it in one place, as for every op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._measure import Picks
from .activations import apply_activation
from .backend import register
from .conv import output_memory_format, shape_key

OP = "conv_bn_act"


def _conv_bn_act_torch(x, weight, bias, stride, padding, dilation, groups, activation, residual):
    # cuDNN in x.dtype (fp32 accumulation), then the epilogue: the BN-folded cuDNN baseline.
    y = F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation,
                 groups)
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation).contiguous(memory_format=output_memory_format(x))


def _conv_then_epilogue(x, weight, bias, stride, padding, dilation, groups, activation, residual):
    # On the H100, cuDNN given the bias chose slower engines for some layers
    # (N = 64, bf16: ResNet-50 layer1.0.downsample 203 us against 156 eager).
    y = F.conv2d(x, weight.to(x.dtype), None, stride, padding, dilation, groups)
    if bias is not None:
        y.add_(bias.to(x.dtype).reshape(1, -1, 1, 1))
    if residual is not None:
        y.add_(residual)
    return apply_activation(y, activation, inplace=True).contiguous(memory_format=output_memory_format(x))


# torch.cudnn_convolution_relu / _add_relu run conv, bias, the residual add and ReLU as one
# cuDNN graph (runtime fusion; PyTorch falls back to separate ops where cuDNN has no engine),
# saving the output's extra round trips through memory.
def _conv_bn_act_cudnn_fused(x, weight, bias, stride, padding, dilation, groups, activation, residual):
    w, b = weight.to(x.dtype), None if bias is None else bias.to(x.dtype)
    if residual is None:
        y = torch.cudnn_convolution_relu(x, w, b, stride, padding, dilation, groups)
    else:
        y = torch.cudnn_convolution_add_relu(x, w, residual, 1.0, b, stride, padding, dilation, groups)
    return y.contiguous(memory_format=output_memory_format(x))


_FUSED_PICKS = Picks(OP, "cuDNN's fused conv+ReLU")
_SPLIT_PICKS = Picks(OP, "cuDNN conv, then bias and activation")


def _fused_supports(x, weight, bias, stride, padding, dilation, groups, activation, residual) -> str | None:
    if x.device.type != "cuda":
        return "cuDNN's fused conv runs on CUDA tensors"
    if activation != "relu":
        return f"cuDNN's fused epilogue is ReLU; {activation} takes conv, then the epilogue"
    if x.dtype not in (torch.float16, torch.bfloat16):
        return "the fused path serves fp16 / bf16 (fp32 keeps cuDNN's plain conv)"
    if residual is not None and residual.dtype != x.dtype:
        return "residual dtype differs from x"
    args = (x, weight, bias, stride, padding, dilation, groups, activation, residual)
    return _FUSED_PICKS.reason(shape_key(*args), _conv_bn_act_cudnn_fused, args)


def _split_supports(x, weight, bias, stride, padding, dilation, groups, activation, residual) -> str | None:
    if x.device.type != "cuda":
        return "timed on CUDA tensors only; elsewhere the conv takes the bias"
    if residual is not None and residual.dtype != x.dtype:
        return "residual dtype differs from x (the in-place add would have to round it)"
    args = (x, weight, bias, stride, padding, dilation, groups, activation, residual)
    return _SPLIT_PICKS.reason(shape_key(*args), _conv_then_epilogue, args)


# Order matters: within the torch backend the fused path is asked first, then conv-then-bias.
register(OP, "torch", supports=_fused_supports)(_conv_bn_act_cudnn_fused)
register(OP, "torch", supports=_split_supports)(_conv_then_epilogue)
register(OP, "torch")(_conv_bn_act_torch)
