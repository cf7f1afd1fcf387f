"""Triton implementations of the int4 ops, registered as the "triton" backend.

Each implementation imports its launcher from kernelswap.kernels inside the call, so
importing kernelswap never needs Triton.

int4_linear picks a kernel by the number of tokens M (x flattened to (M, K)):
  M <= GEMV_M_MAX      w4a16_gemv: CUDA-core FMAs, scale/zero factored out per group
  M <= SMALL_M_MAX     w4a16_gemm, small-M tuning: one 16-row tl.dot tile, split-K
  larger M             w4a16_gemm, large-M tuning
and declines (so the "torch" backend serves) where a torch path was measured faster on CUDA:
  tinygemm             bf16, M <= int4_tinygemm.TINYGEMM_M_MAX, where tinygemm can run
  dequant + cuBLAS     M >= TORCH_FROM_M
The kernels read the public packed format as is (the GEMV views the bytes as int32
words), so no prepared copy of the weight is needed; each weight keeps only the split-K tile
counters of the GEMV and the small-M GEMM (ops/_prepared.splitk_counters), made by `prepare`
so a call under CUDA-graph capture allocates none that outlive it.
"""
from __future__ import annotations

import torch

from . import int4_tinygemm
from ._prepared import prepare_splitk_counters, splitk_counters
from .backend import Preference, register

# GEMV_M_MAX: at M = 4 on 4096 x 14336 (H100, bf16) the GEMV took 216.4 us and gemm_small
# 47.4 us, so M = 2..4 belong to gemm_small (at M = 1: GEMV 84.6 us, gemm_small not timed).
# For bf16 those M go to tinygemm anyway; lowering this for fp16 / fp32 needs the CPU test
# of pick_kernel in tests/test_int4_triton.py updated with it, so it is left at 4 for now.
GEMV_M_MAX = 4  # mirrors kernelswap.kernels.w4a16_gemv.GEMV_M_MAX (not imported: no Triton at import)
SMALL_M_MAX = 16  # mirrors kernelswap.kernels.w4a16_gemm.SMALL_M_MAX
# From this many tokens on, "dequantize once + cuBLAS" (the torch backend) beats the fused
# large-M kernel on CUDA. H100, bf16, g128 asym (benchmarks/int4_triton_quick.py), us;
# dequant+cuBLAS measured with the dequantize tile 32 x 256, and projected for the tile
# now used (8 x 1024) as cuBLAS + its measured dequantize (106.7 / 165.5 us):
#   M x K x N            cuBLAS bf16  triton gemm_large  dequant+cuBLAS (32x256)  projected (8x1024)
#   128 x 4096 x 14336        56.4          65.5             291.6                    ~163
#   256 x 4096 x 14336        58.8         121.5             294.2                    ~166
#   512 x 4096 x 14336        96.3         231.2             333.3                    ~203
#  1024 x 4096 x 14336       167.4         412.7             400.3                    ~274
#  4096 x 4096 x 14336       684.9        1553.0             880.8                    ~792
#   512 x 8192 x 8192         97.3         245.9             572.1                    ~263
#  4096 x 8192 x 8192 (P5)   687.1        1891.5            1186.1                    ~853
# At M = 512 the two shapes disagree (gemm_large loses 14% / wins 6%): 512 keeps the loss small.
# That table is gemm_large before its issue-13 configs (swap-AB tiles of 128 weight rows x
# 64-256 tokens, kernels/w4a16_gemm.large_m_configs). With them (H200, 2026-12-01,
# benchmarks/results/never_slower.md, graph-replayed, time over bf16's at 4096x14336 /
# 8192x28672): Triton 1.64 / 1.61 at M = 512, 1.64 / 1.64 at 2048; dequantize + cuBLAS 2.10 /
# 2.36 at 512, 1.22 / 1.35 at 2048, 1.06 / 1.09 at 8192. So the Triton GEMM below 2048 and
# cuBLAS from 2048; M between 512 and 2048 was not swept.
TORCH_FROM_M: int | None = 2048


def _supports(x, w_packed, scales, zeros, group_size, bias) -> str | None:
    m = x.shape[0]
    if x.device.type == "cuda" and x.dtype == torch.float32 and pick_kernel(m) != "gemv":
        # An fp32 tl.dot must run as exact fp32 FMAs (no tensor cores; sm_90 compile of the
        # large tile shows no mma and 128 KiB of shared memory): cuBLAS fp32 is the better path.
        return "fp32 activations beyond the GEMV: dequantize + cuBLAS fp32 (torch backend)"
    if x.device.type == "cuda" and int4_tinygemm.supports(x, w_packed, scales, zeros, group_size, bias) is None:
        return Preference(f"M={m} <= {int4_tinygemm.TINYGEMM_M_MAX}, bf16: tinygemm (torch backend) is faster here")
    if x.device.type == "cuda" and TORCH_FROM_M is not None and m >= TORCH_FROM_M:
        return Preference(f"M={m} >= {TORCH_FROM_M}: dequantize + cuBLAS (torch backend) is faster here")
    return None


def pick_kernel(m: int) -> str:
    """Which kernel serves M tokens: 'gemv', 'gemm_small' or 'gemm_large'."""
    if m <= GEMV_M_MAX:
        return "gemv"
    return "gemm_small" if m <= SMALL_M_MAX else "gemm_large"


@register("int4_linear", "triton", supports=_supports, prepare=prepare_splitk_counters)
def _int4_linear_triton(x, w_packed, scales, zeros, group_size, bias):
    from kernelswap.kernels.w4a16_gemm import w4a16_gemm
    from kernelswap.kernels.w4a16_gemv import w4a16_gemv

    kind = pick_kernel(x.shape[0])
    if kind == "gemv":
        return w4a16_gemv(x, w_packed, scales, zeros, group_size, bias, counters=splitk_counters(w_packed))
    if kind == "gemm_small":
        return w4a16_gemm(x, w_packed, scales, zeros, group_size, bias, small_m=True,
                          counters=splitk_counters(w_packed))
    return w4a16_gemm(x, w_packed, scales, zeros, group_size, bias, small_m=False)
