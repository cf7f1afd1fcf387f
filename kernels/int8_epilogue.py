"""The one epilogue every int8-weight GEMM matches, and the split-K reduction that ends in it.

    out[m, n] = (acc[m, n] * a_scale[m]) * b_scale[n] + bias[n]   in fp32, then -> out dtype

(kernelswap.ops.int8.scale_epilogue_ref; W8A16 has no a_scale.) The multiplications
are written in the reference's order; launchers compile these kernels with
enable_fp_fusion=False on the GPU so `* b_scale + bias` is not contracted into an FMA,
which keeps the output bit-identical to the reference given the same accumulator.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch

@triton.jit
def store_scaled(
    acc,              # (BLOCK_M, BLOCK_N) int32 or fp32 accumulator
    offs_m, offs_n,   # (BLOCK_M,), (BLOCK_N,) output rows / columns of this tile
    M, N,
    a_scale_ptr,      # (M,) fp32 per-token scale (read only when HAS_A_SCALE)
    b_scale_ptr,      # (N,) fp32 per-channel scale
    bias_ptr,         # (N,) fp32/fp16/bf16 (read only when HAS_BIAS)
    c_ptr,            # (M, N) output, strides stride_cm, stride_cn
    stride_cm, stride_cn,
    HAS_A_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    mask_m = offs_m < M
    mask_n = offs_n < N
    out = acc.to(tl.float32)
    if HAS_A_SCALE:
        a_s = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
        out = out * a_s[:, None]
    b_s = tl.load(b_scale_ptr + offs_n, mask=mask_n, other=0.0)
    out = out * b_s[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        out = out + bias[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _splitk_reduce_kernel(
    part_ptr,         # (SPLIT_K, M, N) int32 or fp32 partial accumulators, contiguous
    a_scale_ptr, b_scale_ptr, bias_ptr,
    c_ptr,            # (M, N) output
    M, N, stride_cm, stride_cn,
    SPLIT_K: tl.constexpr,
    HAS_A_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    ptrs = part_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    # Partials are summed in split order: int32 sums are exact, fp32 sums deterministic.
    acc = tl.load(ptrs, mask=mask, other=0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ptrs + s * M * N, mask=mask, other=0)
    store_scaled(acc, offs_m, offs_n, M, N, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
                 stride_cm, stride_cn, HAS_A_SCALE, HAS_BIAS)


def gpu_compile_options(device: torch.device) -> dict:
    """Keep `* b_scale + bias` a separate multiply and add (see module docstring)."""
    return {"enable_fp_fusion": False} if device.type == "cuda" else {}


def splitk_reduce(part: torch.Tensor, a_scale: torch.Tensor | None, b_scale: torch.Tensor,
                  bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """part (S, M, N) partial accumulators -> out (M, N) with the scale epilogue applied."""
    s, m, n = part.shape
    # Small M only (split-K serves M <= SMALL_M = 32, int8_gemm.default_split_k): a thin tile keeps every SM busy.
    block_m = min(16, triton.next_power_of_2(max(m, 1)))
    block_n = 256
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    dummy = b_scale  # never read when the matching HAS_* flag is off
    launch(_splitk_reduce_kernel, grid,
           (part, a_scale if a_scale is not None else dummy, b_scale, bias if bias is not None else dummy,
            out, m, n, out.stride(0), out.stride(1)),
           dict(SPLIT_K=s, HAS_A_SCALE=a_scale is not None, HAS_BIAS=bias is not None,
                BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, **gpu_compile_options(part.device)))
    return out
