"""W4A16 GEMM: int4 weights unpacked and group-dequantized in registers, fed to tl.dot.

Weight format (kernelswap.ops.int4): w_packed (N, Kp // 2) uint8 with even k in the low
nibble, scales (N, Kp // GROUP) fp16, zeros (N, Kp // GROUP) uint8 or None (symmetric: 8);
x carries the true K <= Kp. out = x @ ((code - zero) * scale)[:, :K].T (+ bias), fp32 accumulate.

One kernel, two tunings (chosen by the caller, see kernelswap.ops.int4_triton):
  small_m  M <= 16: one 16-row tile covers every token, so each weight byte is read once;
           split-K spreads the weight read over enough CTAs to fill the GPU; the last split
           of a tile sums the fp32 partials in split order and stores the output with the
           bias (splitk.py: one launch, deterministic).
  large_m  swizzled 2-D tiles, no split-K; optionally "swap AB" (out^T = W x^T) so the
           dequantized tile is the left operand, which Hopper's wgmma can take straight
           from registers instead of a round trip through shared memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tiles import grouped_tile
from ._tuning import TileBytes, autotune, interpreting
from .splitk import TILE_MIN, scratch, splitk_sum_at, widest

# Bits of the float 2**23: OR-ing a 4-bit code into its mantissa and subtracting 2**23
# gives the code as fp32 with one integer and one float op, avoiding the quarter-rate
# int->float convert.
MAGIC_F32_BITS = tl.constexpr(0x4B000000)
MAGIC_F32 = tl.constexpr(8388608.0)


@triton.jit
def dequant_tile(wb, s, z, SYMMETRIC: tl.constexpr):
    """wb (R, C//2) uint8 packed bytes -> (R, C) fp32 weights in k order.

    s, z: fp16 scales / uint8 zeros broadcastable to (R, C) (one group per tile: (R, 1))."""
    codes = tl.interleave(wb & 0xF, wb >> 4)  # even k from the low nibble, odd k from the high one
    cf = (codes.to(tl.int32) | MAGIC_F32_BITS).to(tl.float32, bitcast=True) - MAGIC_F32
    sf = s.to(tl.float32)
    if SYMMETRIC:
        zs = 8.0 * sf
    else:
        zs = z.to(tl.float32) * sf
    # (code - zero) * scale is exact in fp32 (4 + 11 significant bits); so is the fma form.
    return cf * sf - zs


@triton.jit
def _w4a16_gemm_kernel(
    x,  # (M, K) fp16 / bf16 / fp32, unit stride along K
    w_packed,  # (N, KP // 2) uint8, row-major
    s_ptr,  # (N, KP // GROUP) fp16, row-major
    z_ptr,  # (N, KP // GROUP) uint8, row-major (a dummy when SYMMETRIC)
    b_ptr,  # (N,) bias, any float dtype (a dummy when not HAS_BIAS)
    out_ptr,  # (M, N) x.dtype, contiguous
    part_ptr,  # (SPLIT_K, M, N) fp32 partial sums (SPLIT_K > 1 only)
    counter_ptr,  # per-tile int32 arrival counters, zero between launches (SPLIT_K > 1 only)
    M, N, K, KP,
    M_KEY,  # autotune bucket of M; unused in the body
    stride_xm, stride_wn, stride_sn, stride_om,
    GROUP: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, SWAP_AB: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Wrap out-of-range rows/columns onto valid ones so loads need no row mask; the store masks.
    rm = offs_m % M
    rn = offs_n % N

    k_per_split = tl.cdiv(tl.cdiv(KP, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, KP)

    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        offs_kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        a = tl.load(x + rm[:, None] * stride_xm + offs_k[None, :], mask=offs_k[None, :] < K, other=0.0)
        wb = tl.load(w_packed + rn[:, None] * stride_wn + offs_kb[None, :], mask=offs_kb[None, :] < KP // 2, other=0)
        if BLOCK_K <= GROUP:
            # Tiles are aligned (both powers of two), so the whole tile is one group.
            g = k0 // GROUP
            s = tl.load(s_ptr + rn * stride_sn + g)[:, None]
            z = s
            if not SYMMETRIC:
                z = tl.load(z_ptr + rn * stride_sn + g)[:, None]
        else:
            gk = offs_k // GROUP
            gmask = gk[None, :] < KP // GROUP
            s = tl.load(s_ptr + rn[:, None] * stride_sn + gk[None, :], mask=gmask, other=0.0)
            z = s
            if not SYMMETRIC:
                z = tl.load(z_ptr + rn[:, None] * stride_sn + gk[None, :], mask=gmask, other=0)
        w = dequant_tile(wb, s, z, SYMMETRIC).to(a.dtype)  # (BLOCK_N, BLOCK_K)
        if SWAP_AB:
            acc = tl.dot(w, tl.trans(a), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)

    # The output offsets in acc's own orientation, so the swapped tile is stored as it lies.
    if SWAP_AB:
        offs = offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
        out_mask = (offs_m[None, :] < M) & (offs_n[:, None] < N)
        bias_idx = offs_n[:, None]
    else:
        offs = offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        bias_idx = offs_n[None, :]
    last = True
    if SPLIT_K > 1:
        last, acc = splitk_sum_at(acc, offs, out_mask, M, N, pid_k, pid, part_ptr, counter_ptr, SPLIT_K)
    if last:
        if HAS_BIAS:
            acc += tl.load(b_ptr + bias_idx, mask=bias_idx < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _cfg(bm, bn, bk, split_k=1, group_m=8, swap=False, warps=4, stages=3) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "SPLIT_K": split_k,
                          "SWAP_AB": swap}, num_warps=warps, num_stages=stages)


def small_m_configs() -> list[triton.Config]:
    """M <= 16: one BLOCK_M=16 tile row (the tl.dot minimum); the space is how the weight
    read is cut across CTAs. P3/P4 (N=28672, K=8192) want ~1-4 waves of 132 SMs:
    BLOCK_N 64 -> 448 column tiles; split-K 2-8 for the narrower N=4096-14336 layers.
    First entry is the interpreter's single config (small, so CPU tests stay fast)."""
    return [
        _cfg(16, 32, 64, split_k=1, group_m=1, stages=2),
        _cfg(16, 64, 128, split_k=1, group_m=1, stages=4),
        _cfg(16, 64, 128, split_k=2, group_m=1, stages=4),
        _cfg(16, 64, 128, split_k=4, group_m=1, stages=4),
        _cfg(16, 128, 128, split_k=2, group_m=1, stages=4),
        _cfg(16, 32, 128, split_k=1, group_m=1, stages=4),
        _cfg(16, 64, 256, split_k=4, group_m=1, stages=3),
        _cfg(16, 128, 128, split_k=8, group_m=1, stages=3, warps=8),
    ]


def large_m_configs() -> list[triton.Config]:
    """M > 16. For M >= 128, swap-AB tiles (out^T = W x^T: the dequantized weight tile is
    wgmma's register operand, the activations its shared-memory operand) of 128 weight rows
    x 64-256 tokens x 64/128 of K, 3-4 stages. The dequantize costs ~5 ALU ops per weight
    element and is shared by the BLOCK_M tokens of the tile, so the 256-token tiles amortize
    it best (estimate: ALU ~1/3 of the wgmma time at 256 tokens, ~2/3 at 128). Two plain
    tiles stay for M between 16 and 128, where a wide token tile is mostly padding; the
    autotuner keeps the faster per M bucket. Not yet measured on a GPU
    (benchmarks/never_slower.py times the op)."""
    swapped = [
        dict(bm=256, bn=128, bk=64, warps=8, stages=3),
        dict(bm=128, bn=128, bk=64, warps=8, stages=4),
        dict(bm=128, bn=128, bk=64, warps=4, stages=4),
        dict(bm=64, bn=128, bk=64, warps=4, stages=4),
        dict(bm=256, bn=128, bk=128, warps=8, stages=3),
        dict(bm=128, bn=128, bk=128, warps=8, stages=3),
    ]
    plain = [dict(bm=128, bn=128, bk=64, warps=4, stages=4), dict(bm=64, bn=128, bk=64, warps=4, stages=4)]
    out = [_cfg(32, 32, 32, warps=4, stages=2)]  # interpreter's single config
    out += [_cfg(c["bm"], c["bn"], c["bk"], swap=True, warps=c["warps"], stages=c["stages"]) for c in swapped]
    out += [_cfg(c["bm"], c["bn"], c["bk"], warps=c["warps"], stages=c["stages"]) for c in plain]
    return out if interpreting() else out[1:]


# Shared memory per pipeline stage: the activation tile and the packed weight tile.
_SMEM = TileBytes((("BLOCK_M", "BLOCK_K", "x", 1), ("BLOCK_N", "BLOCK_K", "w_packed", 2)))
_KEY = ["M_KEY", "N", "K", "GROUP", "SYMMETRIC"]


_SMALL = autotune(small_m_configs(), key=_KEY, smem=_SMEM)(_w4a16_gemm_kernel)
_LARGE = autotune(large_m_configs(), key=_KEY, smem=_SMEM)(_w4a16_gemm_kernel)
SMALL_M_MAX = 16  # one BLOCK_M=16 tile holds every token
_SMALL_SPLIT_MAX = widest(small_m_configs())
assert widest(large_m_configs()) == 1, "large-M configs do not split K"


def m_key(m: int) -> int:
    """Autotune bucket for M: the next power of two (tiles are powers of two)."""
    return triton.next_power_of_2(max(m, 1))


def w4a16_gemm(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               group_size: int, bias: torch.Tensor | None = None, *, small_m: bool | None = None,
               config: dict | None = None, counters: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) float, unit stride along K -> (M, N) x.dtype.

    small_m: the split-K tuning (default: M <= 16). config: fixed meta-parameters
    (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, SWAP_AB, num_warps, num_stages)
    instead of autotuning, for tests and benchmarks. counters: the weight's split-K tile
    counters (splitk.counters), None: a zeroed set made for a split-K call."""
    m, k = x.shape
    n, kp = w_packed.shape[0], w_packed.shape[1] * 2
    assert x.stride(1) == 1 and w_packed.is_contiguous() and scales.is_contiguous()
    if small_m is None:
        small_m = m <= SMALL_M_MAX
    if m == 0:
        return x.new_empty((0, n))
    out = x.new_empty((m, n))
    # SPLIT_K is the config's (the autotuner picks it inside the launch): scratch for the widest.
    split_max = config.get("SPLIT_K", 1) if config is not None else (_SMALL_SPLIT_MAX if small_m else 1)
    dummy = scales  # stands in for absent optional pointers; never read
    assert split_max == 1 or config is None or min(config["BLOCK_M"], config["BLOCK_N"]) >= TILE_MIN, \
        "split-K tiles are >= 16"
    part, counters = scratch(split_max, m, n, torch.float32, counters, x.device, dummy)
    args = (x, w_packed, scales, dummy if zeros is None else zeros, dummy if bias is None else bias, out, part,
            counters, m, n, k, kp, m_key(m), x.stride(0), w_packed.stride(0), scales.stride(0), out.stride(0))
    meta = dict(GROUP=group_size, SYMMETRIC=zeros is None, HAS_BIAS=bias is not None,
                DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32")

    def grid(c):
        return (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]), c["SPLIT_K"])

    if config is not None:
        launch(_w4a16_gemm_kernel, grid, args, {**meta, **config})
    else:
        launch(_SMALL if small_m else _LARGE, grid, args, meta)
    return out
