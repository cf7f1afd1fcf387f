"""2:4 sparse linear for small M: compressed values + metadata read once, expanded in registers.

Weight format (kernelswap.ops.sparse24): values (N, Kp // 2) with two kept weights per
group of four along K, meta (N, Kp // 8) uint8 with one nibble i0 | i1 << 2 (i0 < i1)
per group, the even group in the low nibble. x carries the true K <= Kp.

Small M is memory-bound: the weight stream (values + meta, 9/16 of the dense bf16
bytes) is the whole cost, so each program streams its rows of values and meta once and
multiplies it with x in registers, in one of two modes (tl.constexpr USE_DOT):
  dot   the dense (BLOCK_N, BLOCK_K) tile is rebuilt,
          w[n, 4g + p] = values[n, 2g] if p == i0 else values[n, 2g + 1] if p == i1 else 0,
        and fed to tl.dot on tensor cores, BLOCK_M >= 16 (M is padded to the tile; the
        padded rows cost math, not bytes, which is free while memory-bound).
  fma   on CUDA cores, one row of x per CTA (M = 1): no dense tile at all; each kept
        value picks its x element (acc[n, g] += v0 * x[4g + i0] + v1 * x[4g + i1]) and
        one reduction over g ends the loop; no shared-memory round trip for w.
Split-K (SPLIT_K > 1) spreads the weight stream over more CTAs when N alone gives too
few; each split writes fp32 / int32 partials and the last split of each tile sums them in
split order (deterministic; int32 exact) and applies the epilogue (splitk.py: one launch).

Issue budget (static count of the SASS loop body, sm_90, Triton 3.6, bf16; an estimate, not
a profile: the kernel's measured times are in benchmarks/results/bench.csv):
streaming 3.0 TB/s over 132 SMs at ~1.75 GHz is ~13 bytes of values + meta per SM clock.
  fma BLOCK_N 64 x BLOCK_K 256, 4 warps: 738 instr/iter/warp -> 0.16 warp-instr/byte
      -> ~2.1 of the 4 issue slots an SM has per clock (selects and compares ~30%).
  dot BLOCK_M 16, 64 x 256, 4 warps: 849 -> 0.18/byte -> ~2.4 slots (32 HMMA; the rest
      is expansion); 128 x 128, 8 warps: 637 -> 0.28/byte -> ~3.6 slots, near issue-bound.
So both modes should stay memory-bound with headroom at M <= 16, if loads overlap.

Two ops share the kernel (tl.constexpr INT8):
  float  out = x @ w.T + bias, fp32 accumulation, x.dtype out.
  int8   x is the per-token quantized activation; int32 accumulation (exact) and the
         int8_scaled_mm epilogue (acc * a_scale[m]) * w_scale[n] + bias[n] in fp32,
         compiled without FMA contraction on the GPU so it matches the reference bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tuning import TileBytes, autotune, interpreting
from .int8_epilogue import store_scaled
from .splitk import scratch, splitk_sum, widest


@triton.jit
def _unpack_24(vals, mb, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """vals (BLOCK_N, BLOCK_K // 2) kept values, mb (BLOCK_N, BLOCK_K // 8) int32 meta bytes
    -> v0, v1, i0, i1: (BLOCK_N, BLOCK_K // 4) each, the two kept values of every group and
    their positions 0..3 inside it."""
    G: tl.constexpr = BLOCK_K // 4
    nib = tl.reshape(tl.join(mb & 0xF, mb >> 4), (BLOCK_N, G))  # group 2j in byte j's low nibble
    v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, G, 2)))
    return v0, v1, nib & 3, nib >> 2


@triton.jit
def _expand_24(v0, v1, i0, i1, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """-> (BLOCK_N, BLOCK_K) dense weights in k order, zeros at pruned positions.

    Each position is its own (BLOCK_N, BLOCK_K // 4) tensor and tl.join stacks them, so a
    group's four weights stay in one thread (a 3-D where spread them over lanes and spilled)."""
    z = tl.zeros_like(v0)  # not a literal 0: Triton 3.6 would promote int8 values to int32
    p0 = tl.where(i0 == 0, v0, z)
    p1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, z))
    p2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, z))
    p3 = tl.where(i1 == 3, v1, z)
    return tl.reshape(tl.join(tl.join(p0, p2), tl.join(p1, p3)), (BLOCK_N, BLOCK_K))  # [.., j, i] = p[2j + i]


@triton.jit
def _gather_dot(xt, v0, v1, i0, i1, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """xt (BLOCK_K,) one row of x -> (BLOCK_N, BLOCK_K // 4) products v0 * x[4g + i0] + v1 * x[4g + i1].

    Picks the x element of each kept value instead of expanding w: 2 selects a kept value
    (i0 is 0..2 and i1 is 1..3 because i0 < i1) where the dense tile costs 3 a position."""
    G: tl.constexpr = BLOCK_K // 4
    even, odd = tl.split(tl.reshape(xt.to(ACC), (G, 2, 2)))  # positions (0, 2) and (1, 3)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    xi0 = tl.where(i0 == 0, x0[None, :], tl.where(i0 == 1, x1[None, :], x2[None, :]))
    xi1 = tl.where(i1 == 3, x3[None, :], tl.where(i1 == 2, x2[None, :], x1[None, :]))
    return v0.to(ACC) * xi0 + v1.to(ACC) * xi1


@triton.jit
def _sparse24_kernel(
    x_ptr,        # (M, K) fp16/bf16/fp32, or int8 when INT8; unit stride along K, row stride stride_xm
    v_ptr,        # (N, KP // 2) kept values, same dtype as x (int8 when INT8), row-major
    meta_ptr,     # (N, KP // 8) uint8, row-major
    out_ptr,      # (M, N) output dtype, row-major
    part_ptr,     # (SPLIT_K, M, N) fp32 / int32 partial sums (SPLIT_K > 1 only)
    counter_ptr,  # per-tile int32 arrival counters, zero between launches (SPLIT_K > 1 only)
    bias_ptr,     # (N,) any float dtype (read when HAS_BIAS)
    a_scale_ptr,  # (M,) fp32 per-token scale (read when INT8)
    w_scale_ptr,  # (N,) fp32 per-channel scale (read when INT8)
    M, N, K, KP,
    M_KEY,        # autotune bucket of M; unused in the body
    stride_xm,
    stride_vn, stride_mn,  # KP // 2 and KP // 8, as arguments so their divisibility is known
    HAS_BIAS: tl.constexpr, INT8: tl.constexpr, USE_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows past N re-read row n % N instead of masking every weight load; the store masks them.
    rn = (offs_n % N).to(tl.int64)
    v_rows = v_ptr + rn[:, None] * stride_vn
    m_rows = meta_ptr + rn[:, None] * stride_mn

    k_per_split = tl.cdiv(tl.cdiv(KP, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = min(k_lo + k_per_split, KP)
    offs_v = tl.arange(0, BLOCK_K // 2)
    offs_b = tl.arange(0, BLOCK_K // 8)
    if not USE_DOT:
        # Meta bytes in 2-byte loads: the tile layout then follows the 16-byte value loads (4
        # groups a thread), not 16-byte meta loads (32 groups a thread, whose x operands took
        # 244 registers at BLOCK_N 64, BLOCK_K 256; 160 with the hint, sm_90, Triton 3.6-3.8).
        offs_b = tl.max_contiguous(offs_b, 2)
    offs_k = tl.arange(0, BLOCK_K)

    ACC: tl.constexpr = tl.int32 if INT8 else tl.float32
    if USE_DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
        x_ok = offs_m[:, None] < M
    else:  # BLOCK_M == 1: one row of x per CTA
        acc2 = tl.zeros((BLOCK_N, BLOCK_K // 4), dtype=ACC)
        x_row = x_ptr + pid_m.to(tl.int64) * stride_xm
        # 0 * x summed over the row: NaN when x has a NaN/Inf anywhere, as in the dense
        # product, where pruned (zero) weights meet it; the gather alone would skip those.
        poison = tl.zeros((BLOCK_K,), dtype=ACC)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cv = k0 // 2 + offs_v
        cb = k0 // 8 + offs_b
        ck = k0 + offs_k
        # The weight stream is read exactly once: keep it from evicting x, which every CTA re-reads.
        vals = tl.load(v_rows + cv[None, :], mask=cv[None, :] < stride_vn, other=0, eviction_policy="evict_first")
        mb = tl.load(m_rows + cb[None, :], mask=cb[None, :] < stride_mn, other=0, eviction_policy="evict_first")
        v0, v1, i0, i1 = _unpack_24(vals, mb.to(tl.int32), BLOCK_N, BLOCK_K)
        if USE_DOT:
            xt = tl.load(x_rows + ck[None, :], mask=x_ok & (ck[None, :] < K), other=0, eviction_policy="evict_last")
            acc = tl.dot(xt, tl.trans(_expand_24(v0, v1, i0, i1, BLOCK_N, BLOCK_K)), acc, out_dtype=ACC)
        else:
            xt = tl.load(x_row + ck, mask=ck < K, other=0, eviction_policy="evict_last")
            acc2 += _gather_dot(xt, v0, v1, i0, i1, BLOCK_K, ACC)
            if not INT8:
                poison += xt.to(ACC) * 0
    if not USE_DOT:
        row = tl.sum(acc2, axis=1)
        if not INT8:
            row += tl.sum(poison, axis=0)
        acc = tl.reshape(row, (1, BLOCK_N))

    last = True
    if SPLIT_K > 1:
        last, acc = splitk_sum(acc, offs_m, offs_n, M, N, pid_k, pid_m * tl.num_programs(0) + pid_n, part_ptr,
                               counter_ptr, SPLIT_K)
    if last:  # the int8_scaled_mm epilogue; float: acc + bias
        store_scaled(acc, offs_m, offs_n, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, N, 1, INT8, HAS_BIAS,
                     INT8)


# ---------------------------------------------------------------- configs and launchers
def _cfg(bn, bk, split_k=1, warps=4, stages=3) -> triton.Config:
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k}, num_warps=warps, num_stages=stages)


def fma_configs() -> list[triton.Config]:
    """M = 1 on CUDA cores (gather mode). Registers a thread (ptxas, sm_90, Triton 3.6):
    90 at BLOCK_N 32 x BLOCK_K 256 / 4 warps, ~160 at 64 x 256 and 64-128 x 256-512 / 8 warps.
    N = 14336-28672 gives 112-896 CTAs at BLOCK_N 32-128; narrow layers (N = 1024-4096) get
    64-256 CTAs at BLOCK_N 16 instead of split-K: chosen when split-K took a second (reduce)
    launch, whose host time at the eager decode step cost more than the few SMs a narrow layer
    leaves idle; split-K configs in this mode were not timed since it became one launch.
    The first entry serves the interpreter only (small, so CPU tests stay fast)."""
    configs = [
        _cfg(16, 64, warps=1, stages=2),
        _cfg(32, 256, warps=4, stages=3),
        _cfg(64, 256, warps=4, stages=3),
        _cfg(64, 512, warps=8, stages=3),
        _cfg(128, 256, warps=8, stages=3),
        _cfg(16, 512, warps=4, stages=3),
        _cfg(16, 256, warps=2, stages=4),
    ]
    return configs[:1] if interpreting() else configs[1:]


def dot_configs() -> list[triton.Config]:
    """1 < M <= 64 on tensor cores (BLOCK_M from the launcher). BLOCK_N 64-128 keeps the
    re-read of x (M x K per CTA, from L2) small next to the weight stream; split-K 2-4 for
    N = 4096-14336 layers that give fewer than ~2 waves of CTAs. 124-209 registers, no
    spills (sm_90, Triton 3.6). BLOCK_N 128 x BLOCK_K 128 with 4 warps is left out: it
    fails Triton's dot-operand pass at BLOCK_M 64 (3.6 and 3.8). First entry: interpreter only."""
    configs = [
        _cfg(32, 64, warps=4, stages=2),
        _cfg(64, 256, warps=4, stages=3),
        _cfg(128, 128, warps=8, stages=4),
        _cfg(128, 256, warps=8, stages=3),
        _cfg(64, 128, split_k=2, warps=4, stages=4),
        _cfg(64, 256, split_k=4, warps=4, stages=3),
    ]
    return configs[:1] if interpreting() else configs[1:]


# Shared memory per pipeline stage: the values and meta tiles (x is a few KB more).
_SMEM = TileBytes((("BLOCK_N", "BLOCK_K", "v_ptr", 2), ("BLOCK_N", "BLOCK_K", "meta_ptr", 8)))
_KEY = ["M_KEY", "N", "K", "USE_DOT", "BLOCK_M", "INT8", "HAS_BIAS"]
# Quick tuning: the candidates differ by tens of percent, not by noise.
_FMA = autotune(fma_configs(), key=_KEY, smem=_SMEM, quick=True)(_sparse24_kernel)
_DOT = autotune(dot_configs(), key=_KEY, smem=_SMEM, quick=True)(_sparse24_kernel)

# The largest SPLIT_K each mode's configs hold: sizes the partial-sum buffer (none at 1).
_SPLIT_MAX = {mode: widest(tuner.configs) for mode, tuner in ((False, _FMA), (True, _DOT))}

FMA_MAX_M = 1      # CUDA-core mode for M <= this by default; tensor cores above
FMA_LIMIT_M = 4    # CUDA-core mode re-reads the weight per row of x: never past this


def block_m_for(m: int, use_dot: bool) -> int:
    """Rows of x per CTA: one in CUDA-core mode; else all of them up to 16 (the tl.dot
    minimum), then 32 / 64."""
    if not use_dot:
        return 1
    return max(16, min(64, triton.next_power_of_2(max(m, 1))))


def _run_gemv(x, values, meta, bias, a_scale, w_scale, out_dtype, use_dot, config, counters):
    m, k = x.shape
    n, kp = values.shape[0], values.shape[1] * 2
    assert x.stride(1) == 1 and values.is_contiguous() and meta.is_contiguous()
    out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    int8 = a_scale is not None
    if use_dot is None:
        use_dot = m > FMA_MAX_M
    assert use_dot or m <= FMA_LIMIT_M, f"CUDA-core mode serves M <= {FMA_LIMIT_M}, got M={m}"
    block_m = block_m_for(m, use_dot)
    tuned = _DOT if use_dot else _FMA
    split_max = config.get("SPLIT_K", 1) if config is not None else _SPLIT_MAX[use_dot]
    dummy = out
    part, counters = scratch(split_max, m, n, torch.int32 if int8 else torch.float32, counters, x.device, dummy,
                             block_m)
    args = (x, values, meta, out, part, counters, dummy if bias is None else bias, a_scale if int8 else dummy,
            w_scale if int8 else dummy, m, n, k, kp, triton.next_power_of_2(m), x.stride(0), kp // 2, kp // 8)
    meta_args = dict(HAS_BIAS=bias is not None, INT8=int8, USE_DOT=use_dot, BLOCK_M=block_m)
    # Keep (acc * a_scale) * w_scale + bias two roundings apart, like the reference.
    opts = {"enable_fp_fusion": False} if int8 and x.is_cuda else {}

    def grid(c):
        return (triton.cdiv(n, c["BLOCK_N"]), c["SPLIT_K"], triton.cdiv(m, block_m))

    if config is not None:
        launch(_sparse24_kernel, grid, args, {**meta_args, **config, **opts})
    else:
        launch(tuned, grid, args, {**meta_args, **opts})
    return out


def sparse24_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
                    *, use_dot: bool | None = None, config: dict | None = None,
                    counters: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) fp16/bf16/fp32 with unit stride along K, values (N, Kp // 2) x.dtype, meta (N, Kp // 8)
    uint8 -> (M, N) x.dtype. use_dot: tensor-core mode (default: M > FMA_MAX_M); config: fixed
    BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages instead of autotuning (tests, benchmarks);
    counters: the weight's split-K counters (splitk.counters), None: made per split-K call."""
    assert values.dtype == x.dtype, "values and x must share a dtype"
    return _run_gemv(x, values, meta, bias, None, None, x.dtype, use_dot, config, counters)


def sparse24_int8_linear(q: torch.Tensor, a_scale: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                         w_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype, *,
                         use_dot: bool | None = None, config: dict | None = None,
                         counters: torch.Tensor | None = None) -> torch.Tensor:
    """q (M, K) int8 per-token quantized x with a_scale (M,) fp32, values (N, Kp // 2) int8,
    meta (N, Kp // 8) uint8, w_scale (N,) fp32 -> (M, N) out_dtype (int8_scaled_mm epilogue)."""
    assert q.dtype == torch.int8 and values.dtype == torch.int8
    return _run_gemv(q, values, meta, bias, a_scale, w_scale, out_dtype, use_dot, config, counters)


def interpreter_safe(dtype: torch.dtype, use_dot: bool) -> bool:
    """The CPU interpreter cannot run a bf16 tl.dot."""
    return not (interpreting() and use_dot and dtype == torch.bfloat16)
