"""Triton implementations of the int8 ops, registered as the "triton" backend.

Each implementation imports its launcher from kernelswap.kernels inside the call, so
importing kernelswap never needs Triton.

  quantize_per_token_int8  kernels.int8_quant (one read of x, bit-exact with the reference)
  int8_scaled_mm           kernels.int8_gemm (int32 accumulate, scale/bias epilogue)
  int8_linear              quant kernel + int8 GEMM (two launches, split-K finished inside the
                           GEMM; q and its scale go through memory: M x K bytes, small next to
                           the weights)
  int8_weight_linear       kernels.w8a16_gemm (int8 -> x.dtype in registers)
The layers' weights keep their split-K tile counters (ops/_prepared.splitk_counters), made by
the `prepare` hooks with the layer's other prepared layouts.
"""
from __future__ import annotations

import torch

from ._prepared import prepare_splitk_counters, splitk_counters
from .backend import Preference, register


@register("quantize_per_token_int8", "triton")
def _quantize_per_token_triton(x):
    from kernelswap.kernels.int8_quant import quantize_per_token
    return quantize_per_token(x)


@register("int8_scaled_mm", "triton")
def _int8_scaled_mm_triton(a, a_scale, b, b_scale, bias, out_dtype):
    from kernelswap.kernels.int8_gemm import int8_scaled_mm
    return int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype)


@register("int8_linear", "triton", prepare=prepare_splitk_counters)
def _int8_linear_triton(x, w_q, w_scale, bias):
    from kernelswap.kernels.int8_gemm import int8_scaled_mm
    from kernelswap.kernels.int8_quant import quantize_per_token
    q, s = quantize_per_token(x)
    return int8_scaled_mm(q, s, w_q, w_scale, bias, x.dtype, counters=splitk_counters(w_q))


# From this many tokens, dequantize + cuBLAS (torch backend) serves int8_weight_linear. H100,
# bf16, benchmarks/results/bench.csv: the Triton W8A16 GEMM ran 4096x8192x8192 in 1,056 us and
# 4096x8192x28672 in 4,278 us against cuBLAS bf16's 730 / 2,577 us (dequantizing the weight
# adds one pass over it, ~64 MB read + 128 MB written for 8192x8192), while at M = 1 and 16
# it won (123 / 101 us against 179 / 180 us). M between 16 and 4096 was not measured; 1024
# is where the GEMM's ~1.45x compute deficit at M = 4096 and the dequantize pass cost about
# the same by that estimate. Those numbers are the kernel before its SWAP_AB large-M configs.
# With them (H200, 2026-12-01, benchmarks/results/never_slower.md, graph-replayed, time over
# bf16's at 4096x14336 / 8192x28672): Triton 1.32 / 1.27 at M = 512, 1.30 / 1.33 at 2048,
# 1.34 / 1.37 at 8192; dequantize + cuBLAS 4.15 / 4.00, 1.83 / 1.82, 1.21 / 1.21. So the
# Triton GEMM up to 2048 and cuBLAS from 8192; M between 2048 and 8192 was not swept.
W8A16_TORCH_FROM_M: int | None = 8192


def _w8a16_supports(x, w_q, w_scale, bias):
    if x.is_cuda and x.dtype == torch.float32:
        # fp32 x needs an IEEE fp32 tl.dot (CUDA cores, no TF32): cuBLAS's fp32 GEMM in the
        # "torch" backend is the better-tuned kernel for that (not measured here).
        return "fp32 activations on the GPU go to cuBLAS (Triton W8A16 targets fp16/bf16)"
    if x.is_cuda and W8A16_TORCH_FROM_M is not None and x.shape[0] >= W8A16_TORCH_FROM_M:
        return Preference(f"M={x.shape[0]} >= {W8A16_TORCH_FROM_M}: dequantize + cuBLAS (torch backend) is "
                          f"faster here")
    return None


@register("int8_weight_linear", "triton", supports=_w8a16_supports, prepare=prepare_splitk_counters)
def _int8_weight_linear_triton(x, w_q, w_scale, bias):
    from kernelswap.kernels.w8a16_gemm import int8_weight_linear
    return int8_weight_linear(x, w_q, w_scale, bias, counters=splitk_counters(w_q))
