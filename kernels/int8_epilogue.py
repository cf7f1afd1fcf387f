"""The one epilogue every int8 GEMM matches (int8_gemm, sparse24_gemv; split-K ends in it too).

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

@triton.jit
def store_scaled(
    acc,              # (BLOCK_M, BLOCK_N) int32 or fp32 accumulator
    offs_m, offs_n,   # (BLOCK_M,), (BLOCK_N,) output rows / columns of this tile
    M, N,
    a_scale_ptr,      # (M,) fp32 per-token scale (read only when HAS_A_SCALE)
    b_scale_ptr,      # (N,) fp32 per-channel scale (read only when HAS_B_SCALE)
    bias_ptr,         # (N,) fp32/fp16/bf16 (read only when HAS_BIAS)
    c_ptr,            # (M, N) output, strides stride_cm, stride_cn
    stride_cm, stride_cn,
    HAS_A_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_B_SCALE: tl.constexpr = True,  # False: no scales at all (2:4 float), acc + bias
):
    mask_m = offs_m < M
    mask_n = offs_n < N
    out = acc.to(tl.float32)
    if HAS_A_SCALE:
        a_s = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
        out = out * a_s[:, None]
    if HAS_B_SCALE:
        b_s = tl.load(b_scale_ptr + offs_n, mask=mask_n, other=0.0)
        out = out * b_s[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        out = out + bias[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def gpu_compile_options(device: torch.device) -> dict:
    """Keep `* b_scale + bias` a separate multiply and add (see module docstring)."""
    return {"enable_fp_fusion": False} if device.type == "cuda" else {}
