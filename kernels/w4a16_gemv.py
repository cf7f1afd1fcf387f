"""W4A16 GEMV for a few tokens (M <= GEMV_M_MAX): CUDA-core FMAs, no tensor cores.

Decode is bound by the weight read (4 bits a weight), so the work per weight must stay
below what the memory system delivers: at ~3 TB/s an H100 streams ~6e12 int4 codes a
second, against ~30e12 simple ALU ops. The kernel therefore
  * reads the packed weight as int32 words (8 codes each, coalesced 16-byte loads);
  * turns a code into fp32 with a shift, one and/or and one subtract (the 2**23 trick,
    no int->float convert);
  * keeps scale and zero point out of the inner loop: per group,
        sum_k (c_k - z) s x_k = s * (sum_k c_k x_k - z * sum_k x_k),
    so each weight costs one FMA per token and each group one multiply-add per row;
  * splits K across CTAs when N alone gives too few of them; the last split of a column
    tile sums the fp32 partials in split order and stores the output (splitk.py: one
    launch, deterministic), the bias added there.
Nibble i of word w (little-endian bytes, low nibble = even k) is k = 8 w + i.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tuning import autotune
from .splitk import scratch, splitk_sum_at, widest
from .w4a16_gemm import MAGIC_F32, MAGIC_F32_BITS

# Each extra token adds a full FMA per weight; tl.dot (w4a16_gemm) was measured faster already
# at M = 4 (ops/int4_triton.py, which says why this stays 4 for now).
GEMV_M_MAX = 4


@triton.jit
def _w4a16_gemv_kernel(
    x,  # (M, K) fp16 / bf16 / fp32, unit stride along K
    w_words,  # (N, KP // 8) int32: w_packed read 4 bytes at a time, row-major
    s_ptr,  # (N, KP // GROUP) fp16, row-major
    z_ptr,  # (N, KP // GROUP) uint8, row-major (a dummy when SYMMETRIC)
    b_ptr,  # (N,) bias, any float dtype (a dummy when not HAS_BIAS)
    out_ptr,  # (M, N) x.dtype, contiguous
    part_ptr,  # (SPLIT_K, M, N) fp32 partial sums (SPLIT_K > 1 only)
    counter_ptr,  # per-column-tile int32 arrival counters, zero between launches (SPLIT_K > 1 only)
    M, N, K, KP,
    M_KEY,  # autotune bucket of M; unused in the body
    stride_xm, stride_wn, stride_sn, stride_om,
    GROUP: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,  # power of two >= M
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # BLOCK_K a multiple of GROUP
    SPLIT_K: tl.constexpr,
):
    GT: tl.constexpr = BLOCK_K // GROUP  # groups a tile
    WG: tl.constexpr = GROUP // 8  # words a group
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = offs_n % N  # wrap so weight loads need no row mask; the store masks
    offs_m = tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    offs_w = tl.arange(0, BLOCK_K // 8)
    offs_g = tl.arange(0, GT)

    k_per_split = tl.cdiv(tl.cdiv(KP, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, KP)

    # Per-group partial sums stay 3-D across the loop and are reduced once at the end: a
    # 2-D accumulator made Triton move every iteration's reduced tile through shared memory
    # from a layout in which threads hold copies, and compute-sanitizer's racecheck reported
    # those copies' same-address writes (write-write, one PC) as races.
    acc = tl.zeros((BLOCK_M, BLOCK_N, GT), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        words = k0 // 8 + offs_w
        wv = tl.load(w_words + rn[:, None] * stride_wn + words[None, :], mask=words[None, :] < KP // 8, other=0)
        cx = tl.zeros((BLOCK_M, BLOCK_N, GT), dtype=tl.float32)  # sum_k c_k x_k per group
        xs = tl.zeros((BLOCK_M, GT), dtype=tl.float32)  # sum_k x_k per group
        for i in tl.static_range(8):
            c = ((wv >> (4 * i)) & 0xF) | MAGIC_F32_BITS
            c = c.to(tl.float32, bitcast=True) - MAGIC_F32  # (BLOCK_N, BLOCK_K // 8)
            kk = k0 + 8 * offs_w + i
            xi = tl.load(x + offs_m[:, None] * stride_xm + kk[None, :],
                         mask=m_ok[:, None] & (kk[None, :] < K), other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_K // 8)
            prod = c[None, :, :] * xi[:, None, :]
            cx += tl.sum(tl.reshape(prod, (BLOCK_M, BLOCK_N, GT, WG)), axis=3)
            xs += tl.sum(tl.reshape(xi, (BLOCK_M, GT, WG)), axis=2)
        g = k0 // GROUP + offs_g
        g_ok = g[None, :] < KP // GROUP
        s = tl.load(s_ptr + rn[:, None] * stride_sn + g[None, :], mask=g_ok, other=0.0).to(tl.float32)
        if SYMMETRIC:
            z = tl.full((BLOCK_N, GT), 8.0, tl.float32)
        else:
            z = tl.load(z_ptr + rn[:, None] * stride_sn + g[None, :], mask=g_ok, other=0).to(tl.float32)
        acc += s[None, :, :] * (cx - z[None, :, :] * xs[:, None, :])

    # Reduced with keep_dims and stored as (BLOCK_M, BLOCK_N, 1) pointers: the store then takes
    # the reduction's own layout, with no trip through shared memory at all (the split-K
    # partials too: splitk_sum_at keeps acc's shape).
    out = tl.sum(acc, axis=2, keep_dims=True)
    offs = offs_m[:, None, None].to(tl.int64) * stride_om + offs_n[None, :, None]
    out_mask = m_ok[:, None, None] & (offs_n[None, :, None] < N)
    last = True
    if SPLIT_K > 1:
        last, out = splitk_sum_at(out, offs, out_mask, M, N, pid_k, pid_n, part_ptr, counter_ptr, SPLIT_K)
    if last:
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n[None, :, None], mask=offs_n[None, :, None] < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=out_mask)


def _cfg(bn, bk, split_k, warps=4, stages=3) -> triton.Config:
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k}, num_warps=warps, num_stages=stages)


def gemv_configs() -> list[triton.Config]:
    """Cuts of the weight read: P3 (N=28672, K=8192) at BLOCK_N=32 is 896 CTAs, several
    per SM; narrower layers (N=4096-14336) need split-K to reach that. BLOCK_K 128-512
    keeps 64-256 bytes a row in flight per iteration. The first entry is the
    interpreter's single config. Every BLOCK_K is a multiple of every group size."""
    return [
        _cfg(16, 128, 1, stages=2),
        _cfg(32, 256, 1), _cfg(32, 256, 2), _cfg(64, 256, 1), _cfg(16, 512, 2), _cfg(64, 256, 4, warps=8),
    ]


_SPLIT_MAX = widest(gemv_configs())
_GEMV = autotune(gemv_configs(), key=["M_KEY", "N", "K", "GROUP", "SYMMETRIC"])(_w4a16_gemv_kernel)


def w4a16_gemv(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               group_size: int, bias: torch.Tensor | None = None, *, config: dict | None = None,
               counters: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) float with M <= GEMV_M_MAX, unit stride along K -> (M, N) x.dtype.

    config: fixed meta-parameters (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)
    instead of autotuning, for tests and benchmarks. counters: the weight's split-K tile
    counters (splitk.counters), None: a zeroed set made for this call."""
    m, k = x.shape
    n, kp = w_packed.shape[0], w_packed.shape[1] * 2
    assert m <= GEMV_M_MAX, f"w4a16_gemv serves M <= {GEMV_M_MAX}, got {m}"
    assert x.stride(1) == 1 and w_packed.is_contiguous() and scales.is_contiguous()
    if m == 0:
        return x.new_empty((0, n))
    # Kp is a multiple of 32, so a row is a whole number of int32 words; a buffer that
    # starts off a 4-byte boundary (a slice) is copied once.
    words = w_packed.view(torch.int32) if w_packed.storage_offset() % 4 == 0 else w_packed.clone().view(torch.int32)
    out = x.new_empty((m, n))
    # Every config may split K, so the scratch is there for the widest split (SPLIT_K is chosen
    # by the autotuner inside the launch): fp32 partials and the column tiles' counters.
    split_max = config["SPLIT_K"] if config is not None else _SPLIT_MAX
    part, counters = scratch(split_max, m, n, torch.float32, counters, x.device, scales)
    args = (x, words, scales, scales if zeros is None else zeros, scales if bias is None else bias, out, part,
            counters, m, n, k, kp, triton.next_power_of_2(m), x.stride(0), words.stride(0), scales.stride(0),
            out.stride(0))
    meta = dict(GROUP=group_size, SYMMETRIC=zeros is None, HAS_BIAS=bias is not None,
                BLOCK_M=triton.next_power_of_2(m))

    def grid(c):
        return (triton.cdiv(n, c["BLOCK_N"]), c["SPLIT_K"])

    if config is not None:
        assert config["BLOCK_K"] % group_size == 0, "BLOCK_K must be a multiple of the group"
        launch(_w4a16_gemv_kernel, grid, args, {**meta, **config})
    else:
        launch(_GEMV, grid, args, meta)
    return out
