"""Direct depthwise 2-D convolution (groups == C_in == C_out) with the folded-BN epilogue.

Depthwise conv has KH*KW multiply-adds per output element, far too few for tensor cores:
it is bound by reading the input and writing the output. On NHWC (channels_last) input
each program owns BLOCK_P output pixels x BLOCK_C channels, so every tap is one load of
contiguous channel runs, and the KH*KW overlapping windows of neighbouring pixels hit
L1/L2 instead of DRAM. Taps are unrolled (KH, KW are tl.constexpr); accumulation is fp32
on CUDA cores, then bias, residual and activation before the single store.
Integer offsets are int32: the op only sends tensors below 2**31 elements here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tuning import autotune
from .activations import apply_activation
from .conv_implicit_gemm import new_output


def _configs() -> list[triton.Config]:
    # The tile is a pixels x channels block of fp32 accumulators; 4096 elements (16 per
    # thread at 4 warps) keep registers low enough for full occupancy. BLOCK_C 32..128
    # trades channel padding waste (C = 96, 144, 240, 576, 960 in MobileNetV2) against
    # load width; the first config is the interpreter's.
    cfgs = [(64, 64, 4), (128, 32, 4), (32, 128, 4), (256, 16, 4), (128, 64, 8)]
    return [triton.Config({"BLOCK_P": bp, "BLOCK_C": bc}, num_warps=w) for bp, bc, w in cfgs]


@autotune(_configs(), key=["P", "C", "H", "W", "stride_h"], quick=True)  # tuned per layer shape, as conv_implicit_gemm
@triton.jit
def _conv_dw_kernel(
    x,  # (N, C, H, W) fp16/bf16/fp32 at strides (sxn, sxc, sxh, sxw); channels_last: sxc == 1
    w,  # (KH*KW, C) contiguous, fp32: prepare_weight
    bias,  # (C,) any float dtype; unread unless HAS_BIAS
    res,  # (N, C, Ho, Wo) any float dtype at strides (srn, src, srh, srw); unread unless HAS_RES
    out,  # (N, C, Ho, Wo) x.dtype at strides (son, soc, soh, sow)
    P, C, H, W, Ho, Wo,  # P = N * Ho * Wo output pixels
    sxn, sxc, sxh, sxw,
    srn, src, srh, srw,
    son, soc, soh, sow,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = offs_p < P
    c_ok = offs_c < C
    hw = Ho * Wo
    img = offs_p // hw
    oh = (offs_p % hw) // Wo
    ow = offs_p % Wo
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_pix = x + img * sxn  # [BLOCK_P] pointers
    x_ch = offs_c * sxc

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for r in tl.static_range(KH):
        ih = ih0 + r * dil_h
        h_ok = p_ok & (ih >= 0) & (ih < H)
        for s in tl.static_range(KW):
            iw = iw0 + s * dil_w
            ok = h_ok & (iw >= 0) & (iw < W)
            xv = tl.load((x_pix + ih * sxh + iw * sxw)[:, None] + x_ch[None, :],
                         mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(w + (r * KW + s) * C + offs_c, mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv[None, :]

    mask = p_ok[:, None] & c_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        acc += tl.load(res + (img * srn + oh * srh + ow * srw)[:, None] + offs_c[None, :] * src,
                       mask=mask, other=0.0).to(tl.float32)
    acc = apply_activation(acc, ACTIVATION)
    tl.store(out + (img * son + oh * soh + ow * sow)[:, None] + offs_c[None, :] * soc,
             acc.to(out.dtype.element_ty), mask=mask)


def prepare_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, KH, KW) -> (KH*KW, C) contiguous fp32 (CUDA-core FMAs take fp32 anyway)."""
    c, one, kh, kw = weight.shape
    assert one == 1, f"depthwise weight must be (C, 1, KH, KW), got {tuple(weight.shape)}"
    return weight.float().reshape(c, kh * kw).t().contiguous()


def conv_depthwise(
    x: torch.Tensor,  # (N, C, H, W) fp16/bf16/fp32, any strides (channels_last is the fast one)
    w_prep: torch.Tensor,  # (KH*KW, C) fp32 from prepare_weight
    kernel_size: tuple[int, int],  # (KH, KW)
    bias: torch.Tensor | None,  # (C,)
    residual: torch.Tensor | None,  # (N, C, Ho, Wo), any strides
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
    activation: int,   # code: index in kernelswap.ops.activations.ACTIVATIONS
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    """act(depthwise_conv2d(x, w) + bias + residual) -> (N, C, Ho, Wo) x.dtype in `memory_format`."""
    n, c, h, wd = x.shape
    kh, kw = kernel_size
    assert w_prep.shape == (kh * kw, c) and w_prep.dtype == torch.float32, (tuple(w_prep.shape), w_prep.dtype)
    out = new_output(x, c, kernel_size, stride, padding, dilation, memory_format)
    ho, wo = out.shape[2:]
    p = n * ho * wo
    if out.numel() == 0:
        return out
    res = residual if residual is not None else out  # dummy pointer, never read
    grid = lambda meta: (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))  # noqa: E731
    launch(_conv_dw_kernel, grid,
           (x, w_prep, bias if bias is not None else out, res, out,
            p, c, h, wd, ho, wo,
            *x.stride(), *res.stride(), *out.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]),
           dict(KH=kh, KW=kw, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                ACTIVATION=activation))
    return out
