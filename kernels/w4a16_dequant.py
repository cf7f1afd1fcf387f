"""W4A16 weight dequantization: packed int4 -> dense (N, K) in the activation dtype, one pass.

The large-M int4_linear path (kernelswap.ops.int4, "torch" backend) is dequantize + cuBLAS;
its dequantize must cost next to the cuBLAS call, i.e. run at memory speed: read the
packed bytes (N * Kp / 2), the scales and zeros once, write N * K elements of x.dtype,
and nothing else (no fp32 (N, Kp) intermediate, no separate cast pass).

Numerics: w = (code - zero) * scale computed in fp32, where it is exact (a 4-bit integer
times an fp16 scale needs 15 significant bits), then rounded once to the output dtype
(round to nearest even, as torch's .to()). So the result equals
kernelswap.ops.int4.dequantize_int4_ref(...)[:, :K].to(dtype) bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
# Elementwise and memory-bound; the tile only changes how the bytes are cut. Measured on an
# H100 (benchmarks/int4_triton_quick.py "dequant_only" rows, bf16 out, g128 asym; us and
# GB/s of packed weight + scales + zeros read + bf16 written), the DEQUANT_SWEEP below:
#   BLOCK_N x BLOCK_K, warps   4096 x 14336      8192 x 28672      8192 x 8192
#   32 x 256, 4               234.8 ( 631)     1628.7 ( 364)      472.3 (359)
#   16 x 512, 4               146.1 (1014)      907.6 ( 653)      264.6 (640)
#   64 x 256, 8               257.9 ( 574)     1691.2 ( 351)      492.6 (344)
#    8 x 1024, 4              106.7 (1389)      555.4 (1067)      165.5 (1023)
# Long thin tiles win: each row's 512 contiguous packed bytes and 2 KiB of output go in
# one sweep. Still ~1/3 of the 3.0 TB/s copy peak: wider BLOCK_K / fewer rows are the
# next configs to time.
DEFAULT_CONFIG = dict(BLOCK_N=8, BLOCK_K=1024, num_warps=4)
DEQUANT_SWEEP = [
    dict(BLOCK_N=32, BLOCK_K=256, num_warps=4),
    dict(BLOCK_N=16, BLOCK_K=512, num_warps=4),
    dict(BLOCK_N=64, BLOCK_K=256, num_warps=8),
    dict(BLOCK_N=8, BLOCK_K=1024, num_warps=4),
]


@triton.jit
def _w4a16_dequant_kernel(
    w_packed,  # (N, KP // 2) uint8, row-major; even k in the low nibble
    s_ptr,  # (N, KP // GROUP) fp16, row-major
    z_ptr,  # (N, KP // GROUP) uint8, row-major (a dummy when SYMMETRIC)
    out_ptr,  # (N, K) x.dtype, row-major; K <= KP (the padding columns are not written)
    N, K,
    stride_wn, stride_sn, stride_on,
    GROUP: tl.constexpr, SYMMETRIC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)  # byte columns
    rows = offs_n.to(tl.int64)[:, None]  # N * KP can pass 2**31 on the largest layers
    n_ok = (offs_n < N)[:, None]
    # A byte holds k = 2b and 2b + 1; it is needed when 2b < K (then 2b + 1 <= KP - 1 exists).
    b_mask = n_ok & (offs_b * 2 < K)[None, :]
    wb = tl.load(w_packed + rows * stride_wn + offs_b[None, :], mask=b_mask, other=0)
    codes = tl.interleave(wb & 0xF, wb >> 4)  # (BLOCK_N, BLOCK_K) in k order
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = n_ok & (offs_k < K)[None, :]
    # One scale / zero per GROUP columns; the repeated addresses are served from L1.
    g_idx = rows * stride_sn + (offs_k // GROUP)[None, :]
    s = tl.load(s_ptr + g_idx, mask=k_mask, other=0.0).to(tl.float32)
    if SYMMETRIC:
        z = 8.0
    else:
        z = tl.load(z_ptr + g_idx, mask=k_mask, other=0).to(tl.float32)
    w = (codes.to(tl.float32) - z) * s  # exact in fp32; one rounding below
    tl.store(out_ptr + rows * stride_on + offs_k[None, :], w.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=k_mask)


def w4a16_dequant(w_packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                  k: int, dtype: torch.dtype, *, config: dict | None = None) -> torch.Tensor:
    """(N, Kp // 2) packed int4 -> (N, k) `dtype` weights, k <= Kp (see the module docstring).

    config: BLOCK_N, BLOCK_K, num_warps instead of DEFAULT_CONFIG (benchmarks, tests)."""
    n, kp = w_packed.shape[0], w_packed.shape[1] * 2
    assert k <= kp and w_packed.is_contiguous() and scales.is_contiguous()
    assert zeros is None or zeros.is_contiguous()
    out = torch.empty((n, k), device=w_packed.device, dtype=dtype)
    if n == 0 or k == 0:
        return out
    c = dict(DEFAULT_CONFIG if config is None else config)
    grid = (triton.cdiv(n, c["BLOCK_N"]), triton.cdiv(k, c["BLOCK_K"]))
    launch(_w4a16_dequant_kernel, grid,
           (w_packed, scales, scales if zeros is None else zeros, out, n, k,
            w_packed.stride(0), scales.stride(0), out.stride(0)),
           dict(GROUP=group_size, SYMMETRIC=zeros is None, **c))
    return out
