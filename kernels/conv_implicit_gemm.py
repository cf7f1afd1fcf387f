"""Implicit-GEMM 2-D convolution with the folded-BN epilogue (bias, residual, activation).

The convolution is a GEMM that is never materialised (no im2col buffer):

  M = N * Ho * Wo   (output pixels: rows)
  N_gemm = C_out / groups   (columns)
  K = KH * KW * C_in / groups, ordered (kh, kw, c_in) so that, for channels_last input,
      a run of K inside one tap is a contiguous run of channels in memory.

A-tiles are gathered from the input on the fly; B is the weight pre-arranged once as
(groups, K, C_out_g) by `prepare_weight` (kept by kernelswap.ops._prepared). The fp32
accumulator gets bias, the residual (read at the output's strides) and the activation
before the single store, in the output's strides (channels_last from the op).

Two ways to walk K, picked per config by heuristics (tl.constexpr flags, not copied kernels):
  TAP_MAJOR     (C_in_g >= 32, or a 1x1 conv) each K-block lies inside one tap: the tap and
                the channel offset are scalars, each A row is one contiguous load that the
                pipeliner turns into cp.async (sm_90 AOT build: wgmma + cp.async + 16-byte
                loads). When BLOCK_K does not divide C_in_g (EVEN_C false) the last block of
                each tap is masked: C_in_g = 144 at BLOCK_K 32 wastes 10% of K.
  flat          (the 3-channel stem, other thin inputs) every k is decoded into (kh, kw, c)
                per element and K is flattened across taps, so C_in = 3 wastes little of the
                tile; these gathers are not pipelined (element-wise, no cp.async).
Integer offsets are int32: the op only sends tensors below 2**31 elements here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tiles import grouped_tile
from ._tuning import TileBytes, autotune
from .activations import apply_activation


def _configs() -> list[triton.Config]:
    # Tiles of the usual Hopper/Ampere GEMM sweep (Triton tutorial 03), trimmed to keep the
    # tuning compile time small: conv GEMMs here have K <= 4608 and C_out_g in 16..2048,
    # so 64/128 tiles with 3-4 stages cover them; BLOCK_N 32 serves the narrow C_out layers
    # (MobileNetV2 projections to 16..32 channels). The first config is the interpreter's.
    cfgs = [
        # BLOCK_M, BLOCK_N, BLOCK_K, stages, warps
        (128, 128, 64, 3, 8),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 128, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (128, 32, 32, 4, 4),
    ]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in cfgs]


@triton.jit
def _mma(a, b, acc, IEEE_FP32: tl.constexpr):
    if IEEE_FP32:  # fp32 inputs: exact fp32 products, not TF32
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


# quick: a model's first call tunes at each of its layer shapes (tens in MobileNetV2).
@autotune(_configs(), key=["M", "C_in_g", "C_out_g", "K", "stride_h", "IEEE_FP32"],
          smem=TileBytes((("BLOCK_M", "BLOCK_K", "x", 1), ("BLOCK_K", "BLOCK_N", "w", 1))), quick=True)
@triton.heuristics({"TAP_MAJOR": lambda a: a["C_in_g"] >= 32 or a["K"] == a["C_in_g"],
                    "EVEN_C": lambda a: a["C_in_g"] % a["BLOCK_K"] == 0})
@triton.jit
def _conv_igemm_kernel(
    x,  # (N, C_in, H, W) fp16/bf16/fp32 at strides (sxn, sxc, sxh, sxw); channels_last: sxc == 1
    w,  # (groups, K, C_out_g) contiguous, x.dtype, K ordered (kh, kw, c_in): prepare_weight
    bias,  # (C_out,) any float dtype; unread unless HAS_BIAS
    res,  # (N, C_out, Ho, Wo) any float dtype at strides (srn, src, srh, srw); unread unless HAS_RES
    out,  # (N, C_out, Ho, Wo) x.dtype at strides (son, soc, soh, sow)
    M, H, W, Ho, Wo, C_in_g, C_out_g, K,
    sxn, sxc, sxh, sxw,
    srn, src, srh, srw,
    son, soc, soh, sow,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACTIVATION: tl.constexpr,
    IEEE_FP32: tl.constexpr,  # fp32 inputs: exact fp32 products, not TF32
    TAP_MAJOR: tl.constexpr, EVEN_C: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)  # conv group
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(C_out_g, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < C_out_g

    # Output pixel of each row, and the top-left input pixel its window starts at.
    hw = Ho * Wo
    img = offs_m // hw
    oh = (offs_m % hw) // Wo
    ow = offs_m % Wo
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_rows = x + img * sxn + (g * C_in_g) * sxc  # [BLOCK_M] pointers
    w_g = w + g * K * C_out_g

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if TAP_MAJOR:
        c_blocks = tl.cdiv(C_in_g, BLOCK_K)
        for t in range(0, (K // C_in_g) * c_blocks):  # one flat loop over (tap, channel block): pipelined
            tap = t // c_blocks
            c = (t - tap * c_blocks) * BLOCK_K + offs_k
            ih = ih0 + (tap // KW) * dil_h
            iw = iw0 + (tap % KW) * dil_w
            row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a_ptrs = (x_rows + ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc
            b_ptrs = w_g + (tap * C_in_g + c)[:, None] * C_out_g + offs_n[None, :]
            if EVEN_C:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
            else:
                c_ok = c < C_in_g
                a = tl.load(a_ptrs, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _mma(a, b, acc, IEEE_FP32)
    else:
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            c = k % C_in_g
            tap = k // C_in_g
            ih = ih0[:, None] + ((tap // KW) * dil_h)[None, :]
            iw = iw0[:, None] + ((tap % KW) * dil_w)[None, :]
            a_ok = m_ok[:, None] & (k < K)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_rows[:, None] + ih * sxh + iw * sxw + c[None, :] * sxc, mask=a_ok, other=0.0)
            b = tl.load(w_g + k[:, None] * C_out_g + offs_n[None, :], mask=(k < K)[:, None] & n_ok[None, :],
                        other=0.0)
            acc = _mma(a, b, acc, IEEE_FP32)

    # Epilogue in fp32: bias, residual, activation; one rounding to the output dtype.
    co = g * C_out_g + offs_n
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + co, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        r_ptrs = res + (img * srn + oh * srh + ow * srw)[:, None] + co[None, :] * src
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    acc = apply_activation(acc, ACTIVATION)
    o_ptrs = out + (img * son + oh * soh + ow * sow)[:, None] + co[None, :] * soc
    tl.store(o_ptrs, acc.to(out.dtype.element_ty), mask=mask)


def prepare_weight(weight: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """(C_out, C_in_g, KH, KW) -> (groups, KH*KW*C_in_g, C_out_g) contiguous in `dtype`."""
    c_out, c_in_g, kh, kw = weight.shape
    w = weight.to(dtype).reshape(groups, c_out // groups, c_in_g, kh, kw)
    return w.permute(0, 3, 4, 2, 1).reshape(groups, kh * kw * c_in_g, c_out // groups).contiguous()


def new_output(x: torch.Tensor, c_out: int, kernel_size: tuple[int, int], stride, padding, dilation,
               memory_format: torch.memory_format) -> torch.Tensor:
    """The conv's uninitialized (N, C_out, Ho, Wo) output in x.dtype and `memory_format`."""
    n, _, h, wd = x.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    return torch.empty((n, c_out, ho, wo), device=x.device, dtype=x.dtype).contiguous(memory_format=memory_format)


def conv_implicit_gemm(
    x: torch.Tensor,  # (N, C_in, H, W) fp16/bf16/fp32, any strides (channels_last is the fast one)
    w_prep: torch.Tensor,  # (groups, KH*KW*C_in_g, C_out_g) from prepare_weight, x.dtype
    kernel_size: tuple[int, int],  # (KH, KW)
    bias: torch.Tensor | None,  # (C_out,)
    residual: torch.Tensor | None,  # (N, C_out, Ho, Wo), any strides
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
    activation: int,   # code: index in kernelswap.ops.activations.ACTIVATIONS
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    """act(conv2d(x, w) + bias + residual) -> (N, C_out, Ho, Wo) x.dtype in `memory_format`."""
    n, c_in, h, wd = x.shape
    groups, k, c_out_g = w_prep.shape
    kh, kw = kernel_size
    assert w_prep.dtype == x.dtype and k * groups == kh * kw * c_in, (tuple(w_prep.shape), tuple(x.shape))
    out = new_output(x, groups * c_out_g, kernel_size, stride, padding, dilation, memory_format)
    ho, wo = out.shape[2:]
    m = n * ho * wo
    if out.numel() == 0:
        return out
    res = residual if residual is not None else out  # dummy pointer, never read
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(c_out_g, meta["BLOCK_N"]), groups)  # noqa: E731
    launch(_conv_igemm_kernel, grid,
           (x, w_prep, bias if bias is not None else out, res, out,
            m, h, wd, ho, wo, c_in // groups, c_out_g, k,
            *x.stride(), *res.stride(), *out.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]),
           dict(KW=kw, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                ACTIVATION=activation, IEEE_FP32=x.dtype == torch.float32))
    return out
