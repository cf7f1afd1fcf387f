"""Dynamic per-token int8 quantization: x (M, K) float -> q (M, K) int8, scale (M,) fp32.

Bit-exact with kernelswap.ops.int8.quantize_per_token_ref:
  scale = max|x[m, :]| / 127 (IEEE fp32 division), q = round_half_even(x / scale) (IEEE
  division again), clamped to [-127, 127]; an all-zero row divides by 1 (scale 0, q 0);
  a NaN anywhere in a row makes its scale NaN and every q of the row 0.

Why each step is written the way it is:
- `/` on fp32 lowers to the approximate div.full.f32 on NVIDIA GPUs; tl.math.div_rn is
  the correctly rounded div.rn.f32 (numpy's division in the interpreter), which is what
  torch computes. (tl.fdiv(..., ieee_rounding=True) is not: Triton 3.6 ignores the flag,
  and about 4% of scales came out 1 ulp off on the H100.)
- Rounding: libdevice rint is unavailable in the interpreter, so round with the
  magic number 1.5 * 2^23: for |v| < 2^22, (v + 1.5*2^23) lands in [2^23, 2^24) where
  fp32 spacing is exactly 1, so the addition itself rounds v to an integer with the
  FPU's round-half-even; subtracting the constant again is exact. |v| <= ~127 here.
  Neither LLVM nor numpy folds (v + c) - c without fast-math flags.
- tl.max / tl.maximum drop NaNs on the GPU (maxnum) but keep them in numpy, so the
  NaN rule is an explicit per-row flag, and NaN q values are zeroed before clamping.
- One program holds whole rows in registers when K <= MAX_ONE_PASS_K, so x is read
  from memory once; wider rows take two passes (absmax, then quantize; the second
  pass mostly hits L2).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
# fp32 elements one program keeps in registers for the one-pass path: 16 warps x 32
# threads x 64 values. K = 8192 (the TARGETS.md shapes) fits with room to spare.
MAX_ONE_PASS_K = 32768
# Elements per program for narrow rows (several rows per program), and the chunk
# width of the two-pass path.
TILE_ELEMS = 4096
ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23


@triton.jit
def _round_clamp_int8(v):
    """fp32 -> int8 with round-half-even, NaN -> 0, clamp to [-127, 127]."""
    r = (v + ROUND_MAGIC) - ROUND_MAGIC
    r = tl.where(r != r, 0.0, r)
    r = tl.minimum(tl.maximum(r, -127.0), 127.0)
    return r.to(tl.int8)


@triton.jit
def _quant_rows_kernel(
    x_ptr,      # (M, K) fp32/fp16/bf16, row stride stride_xm, unit column stride
    q_ptr,      # (M, K) int8, contiguous
    s_ptr,      # (M,) fp32
    M, K, stride_xm,
    ROWS: tl.constexpr,       # rows per program
    BLOCK_K: tl.constexpr,    # columns per load (>= K when ONE_PASS)
    ONE_PASS: tl.constexpr,   # whole rows stay in registers: x is read once
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    cols = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * K
    if ONE_PASS:
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)
        n_nan = tl.sum((x != x).to(tl.int32), axis=1)
    else:
        amax = tl.zeros((ROWS,), dtype=tl.float32)
        n_nan = tl.zeros((ROWS,), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            mask = row_ok[:, None] & ((k0 + cols)[None, :] < K)
            xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xc), axis=1))
            n_nan += tl.sum((xc != xc).to(tl.int32), axis=1)
    scale = tl.math.div_rn(amax, tl.full(amax.shape, 127.0, tl.float32))
    scale = tl.where(n_nan > 0, float("nan"), scale)
    safe = tl.where(scale == 0.0, 1.0, scale)
    tl.store(s_ptr + rows, scale, mask=row_ok)
    if ONE_PASS:
        q = _round_clamp_int8(tl.math.div_rn(x, tl.broadcast_to(safe[:, None], x.shape)))
        tl.store(q_rows + cols[None, :], q, mask=mask)
    else:
        for k0 in range(0, K, BLOCK_K):
            mask = row_ok[:, None] & ((k0 + cols)[None, :] < K)
            xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            q = _round_clamp_int8(tl.math.div_rn(xc, tl.broadcast_to(safe[:, None], xc.shape)))
            tl.store(q_rows + k0 + cols[None, :], q, mask=mask)


def quant_launch_params(m: int, k: int) -> dict:
    """Rows per program, tile width, pass count and warps for an (m, k) input."""
    one_pass = k <= MAX_ONE_PASS_K
    block_k = triton.next_power_of_2(max(k, 1)) if one_pass else TILE_ELEMS
    rows = max(1, min(triton.next_power_of_2(max(m, 1)), TILE_ELEMS // block_k)) if one_pass else 1
    elems = rows * block_k
    # ~32 fp32 values a thread, capped at 16 warps (512 threads).
    warps = max(1, min(16, elems // (32 * 32)))
    return dict(ROWS=rows, BLOCK_K=block_k, ONE_PASS=one_pass, num_warps=triton.next_power_of_2(warps))


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) fp32/fp16/bf16 with unit column stride -> (q (M, K) int8, scale (M,) fp32)."""
    assert x.dim() == 2 and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0 or k == 0:
        scale.zero_()
        return q, scale
    p = quant_launch_params(m, k)
    grid = (triton.cdiv(m, p["ROWS"]),)
    launch(_quant_rows_kernel, grid, (x, q, scale, m, k, x.stride(0)), p)
    return q, scale
