"""W8A16: x (M, K) fp16/bf16 (fp32 accepted) @ int8 weights (N, K).T with a per-channel scale.

The kernel is int8_gemm's, in its A_INT8=False mode: b tiles are converted to x's dtype
in registers (int8 -> fp16/bf16 is exact), products accumulate in fp32, and the epilogue
applies acc * w_scale[n] + bias[n] before the cast to x.dtype
(kernelswap.ops.int8.int8_weight_linear_ref). Small M streams the weights with thin tiles
and, when N alone gives too few programs, split-K; large M computes out^T = W x^T
(SWAP_AB) so the converted weight tile feeds Hopper's wgmma from registers and no
dequantized copy of the weight is ever written.
"""
from __future__ import annotations

import torch
import triton

from .int8_gemm import cfg, default_split_k, launch_gemm, make_tuned


def _swap(bn: int, bm: int, bk: int, stages: int, warps: int) -> triton.Config:
    """A SWAP_AB config: BLOCK_N weight rows are the wgmma M side (the register operand),
    BLOCK_M tokens its N side (shared memory)."""
    c = cfg(bm, bn, bk, stages, warps)
    return triton.Config({**c.kwargs, "SWAP_AB": True}, num_stages=stages, num_warps=warps)


def w8a16_large_m_configs() -> list[triton.Config]:
    """M > 32. SWAP_AB tiles (the converted weight tile as wgmma's register operand, module
    docstring): 128 weight rows x 64-256 tokens x 64/128 of K, 3-4 stages; per stage the
    int8 weight tile is half the bytes of a bf16 one, so 128 x 256 x 64 fits 4 deep (the
    TileBytes guard drops what does not fit). Two plain tiles stay for M just above 32, where
    a 64-token swapped tile is mostly padding; the autotuner keeps the faster per M bucket.
    Not yet measured on a GPU (benchmarks/never_slower.py times them)."""
    return [
        _swap(128, 128, 64, 4, 4),
        _swap(128, 128, 64, 4, 8),
        _swap(128, 256, 64, 4, 8),
        _swap(128, 64, 64, 4, 4),
        _swap(128, 128, 128, 3, 8),
        _swap(128, 64, 128, 4, 4),
        cfg(128, 256, 64, 3, 8),
        cfg(64, 128, 64, 4, 4),
    ]


def w8a16_small_m_configs() -> list[triton.Config]:
    """M <= 32: a weight stream; each b byte is read once, so pipeline deep and keep
    enough programs in flight per SM."""
    return [
        cfg(16, 64, 256, 4, 4),
        cfg(16, 128, 128, 4, 4),
        cfg(16, 64, 128, 6, 4),
        cfg(16, 32, 256, 4, 2),
        cfg(32, 64, 128, 5, 4),
        cfg(16, 128, 256, 3, 8),
    ]


_tuned = make_tuned(w8a16_small_m_configs(), w8a16_large_m_configs())


def int8_weight_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                       split_k: int | None = None, use_tma: bool = False,
                       config: dict | None = None, counters: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) float, w_q (N, K) int8, w_scale (N,) fp32, bias (N,) or None -> (M, N) x.dtype.
    split_k None picks one from the shape (default_split_k); counters: w_q's split-K counters
    (splitk.counters), None: made per split-K call."""
    assert w_q.dtype == torch.int8 and x.stride(-1) == 1 and w_q.stride(1) == 1
    m, k = x.shape
    n = w_q.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if split_k is None:
        split_k = default_split_k(m, n, k, x.device)
    return launch_gemm(x, w_q, None, w_scale, bias, out, _tuned, split_k, use_tma, config, counters)
