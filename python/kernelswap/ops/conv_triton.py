"""Triton implementations of the conv ops, registered as the "triton" backend.

conv_bn_act goes to one of two kernels (kernelswap.kernels):
  conv_depthwise      groups == C_in == C_out: a direct kernel (too few FLOPs for tensor cores)
  conv_implicit_gemm  groups == 1, or groups whose per-group channels fill a tensor-core tile

"Never slower" (TARGETS.md P9) is decided in two steps, each giving a reason to fall back
to the "torch" backend (BN-folded cuDNN) when it says no:
  1. static: fp32 activations (cuDNN's own fp32 path is the accurate one; our tl.dot would
     be TF32 or slow IEEE), contiguous-format (NCHW) inputs (the kernels want NHWC rows),
     grouped convs with thin groups, tensors past int32 offsets;
  2. measured: the first call at a new shape on a GPU times the kernel against what the
     torch backend would run (folded cuDNN, fused with ReLU where that was faster) on
     that call's own tensors (like cudnn.benchmark) and remembers the winner per process.
     A call first seen inside CUDA-graph capture cannot be timed and goes to cuDNN.
Forcing the backend (use_backend("triton") / KERNELSWAP_BACKEND=triton) skips step 2 so
numerics can be checked at every shape. Under TRITON_INTERPRET=1 (CPU tests) step 2 is
skipped and fp32 is allowed: the interpreter's fp32 dot is exact.

Each implementation imports its launcher from kernelswap.kernels inside the call, so
importing kernelswap never needs Triton.
"""
from __future__ import annotations

import torch

from ._prepared import PreparedWeights
from ._measure import Picks
from .backend import forced_backend, register, triton_interpreting
from .activations import activation_code
from .conv import output_memory_format, output_shape, shape_key

# Implicit-GEMM weights are cast to x.dtype; one cache per dtype keeps fp16 and bf16 callers apart.
_PREP_GEMM = {dt: PreparedWeights(f"conv_implicit_gemm_{dt}".replace("torch.", ""))
              for dt in (torch.float16, torch.bfloat16, torch.float32)}
_PREP_DW = PreparedWeights("conv_depthwise")  # fp32 whatever x.dtype is

# A group narrower than this wastes most of a 16-wide tensor-core K/N step; cuDNN takes it.
_MIN_GROUP_CHANNELS = 16
_INT32_LIMIT = 2 ** 31
# Shape key -> None when the Triton kernel was measured faster than folded cuDNN, else the reason.
_PICKS = Picks("conv_bn_act", "the Triton kernel")


def _is_depthwise(x, weight, groups) -> bool:
    return groups > 1 and groups == x.shape[1] == weight.shape[0]


def _static_reason(x, weight, bias, stride, padding, dilation, groups, activation, residual) -> str | None:
    interp = x.device.type == "cpu" and triton_interpreting()
    if x.device.type != "cuda" and not interp:
        return "Triton conv kernels run on CUDA tensors"
    if x.dtype == torch.float32 and not interp:
        return "fp32 activations: cuDNN's fp32 path (our tensor-core dot would be TF32)"
    if x.dtype == torch.bfloat16 and interp and not _is_depthwise(x, weight, groups):
        return "the Triton interpreter cannot run a bf16 tl.dot (the depthwise kernel has none)"
    if x.numel() and output_memory_format(x) != torch.channels_last:  # empty: no layout to read
        return "input is not channels_last (NHWC): the kernels read channel runs; cuDNN takes NCHW"
    if groups > 1 and not _is_depthwise(x, weight, groups):
        c_in_g, c_out_g = weight.shape[1], weight.shape[0] // groups
        if min(c_in_g, c_out_g) < _MIN_GROUP_CHANNELS:
            return (f"grouped conv with {c_in_g} in / {c_out_g} out channels per group "
                    f"(< {_MIN_GROUP_CHANNELS}): cuDNN")
    n, _, ho, wo = output_shape(x, weight, stride, padding, dilation)
    if max(x.numel(), n * weight.shape[0] * ho * wo, 0 if residual is None else residual.numel()) >= _INT32_LIMIT:
        return "tensor with 2**31 or more elements: the kernels use int32 offsets"
    return None


def _supports(*args) -> str | None:
    why = _static_reason(*args)
    if why is not None or args[0].device.type != "cuda" or forced_backend() == "triton":
        return why
    return _PICKS.reason(shape_key(*args), conv_bn_act_triton, args)


def _prepare(weight, bias, stride, padding, dilation, groups) -> None:
    """The weight layout the kernel would read for x of the weight's dtype (register's prepare);
    an x of another dtype gets its layout on its first call (outside capture only)."""
    if not weight.is_cuda or weight.dtype not in _PREP_GEMM:
        return
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    if groups > 1 and groups == c_out and c_in_g == 1:
        from ..kernels import conv_depthwise as dw
        _PREP_DW.get((weight,), lambda: dw.prepare_weight(weight))
    elif groups == 1 or min(c_in_g, c_out // groups) >= _MIN_GROUP_CHANNELS:
        from ..kernels import conv_implicit_gemm as ig
        _PREP_GEMM[weight.dtype].get((weight,), lambda: ig.prepare_weight(weight, groups, weight.dtype))


@register("conv_bn_act", "triton", supports=_supports, prepare=_prepare)
def conv_bn_act_triton(x, weight, bias, stride, padding, dilation, groups, activation, residual):
    fmt = output_memory_format(x)
    ksize = (weight.shape[2], weight.shape[3])
    geometry = (tuple(stride), tuple(padding), tuple(dilation))
    if _is_depthwise(x, weight, groups):
        from ..kernels import conv_depthwise as dw
        w = _PREP_DW.get((weight,), lambda: dw.prepare_weight(weight))
        return dw.conv_depthwise(x, w, ksize, bias, residual, *geometry, activation_code(activation), fmt)
    from ..kernels import conv_implicit_gemm as ig
    w = _PREP_GEMM[x.dtype].get((weight,), lambda: ig.prepare_weight(weight, groups, x.dtype))
    return ig.conv_implicit_gemm(x, w, ksize, bias, residual, *geometry, activation_code(activation), fmt)
