"""GEMM against int8 weights b (N, K) row-major (K-contiguous, the nn.Linear layout).

One kernel, two modes (A_INT8):
  W8A8   a (M, K) int8, acc int32 (exact), epilogue (acc * a_scale[m]) * b_scale[n] + bias[n]
  W8A16  a (M, K) fp16/bf16/fp32, b converted to a's dtype in registers (int8 -> fp16/bf16
         is exact), acc fp32, epilogue acc * b_scale[n] + bias[n]
and three orthogonal launch choices, all tl.constexpr:
  SPLIT_K > 1   each program sums 1/SPLIT_K of K and stores its raw partial; the last
                program of each tile adds the partials and applies the epilogue (splitk.py:
                one launch). For small M, where M x N tiles alone cannot fill the SMs.
  USE_TMA       a and b arrive as host TensorDescriptors (Hopper TMA loads, zero fill out
                of bounds); needs K * elem % 16 == 0.
  EVEN_K        K % BLOCK_K == 0: the K loop loads without masks.
  SWAP_AB       W8A16 only: the tile computes out^T = b @ a^T, so the int8 -> x.dtype
                converted weight tile is the dot's left operand, which Hopper's wgmma takes
                from registers (no shared-memory round trip of the converted tile); the
                activations are the right operand, read from shared memory. The
                accumulator is transposed once for the epilogue.
Programs are ordered in GROUP_M-row super-tiles so consecutive programs share b tiles in L2.

This file holds the kernel and the W8A8 launcher; the W8A16 launcher is w8a16_gemm.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tiles import grouped_tile
from ._tuning import TileBytes, autotune, sm_count
from .int8_epilogue import gpu_compile_options, store_scaled
from .splitk import TILE_MIN, scratch, splitk_sum

TUNE_KEY = ["M_BUCKET", "N", "K", "SPLIT_K", "HAS_BIAS", "USE_TMA"]


class _TileBytesOrDesc(TileBytes):
    """TileBytes that also reads the element size through a TensorDescriptor (TMA mode)."""

    def __call__(self, config: triton.Config, named_args: dict) -> int:
        unwrapped = {k: getattr(v, "base", v) for k, v in named_args.items()}
        return super().__call__(config, unwrapped)


def tile_bytes() -> TileBytes:
    # Per pipeline stage: an a tile and a b tile, element sizes read off the tensors.
    return _TileBytesOrDesc((("BLOCK_M", "BLOCK_K", "a_ptr", 1), ("BLOCK_N", "BLOCK_K", "b_ptr", 1)))


@triton.jit
def _gemm_kernel(
    a_ptr,        # (M, K) int8 or float, row-major; a TensorDescriptor [BLOCK_M, BLOCK_K] when USE_TMA
    b_ptr,        # (N, K) int8, row-major;          a TensorDescriptor [BLOCK_N, BLOCK_K] when USE_TMA
    c_ptr,        # (M, N) out dtype
    part_ptr,     # (SPLIT_K, M, N) int32/fp32 partials (SPLIT_K > 1 only)
    counter_ptr,  # per-tile int32 arrival counters, zero between launches (SPLIT_K > 1 only)
    a_scale_ptr,  # (M,) fp32 (A_INT8 only)
    b_scale_ptr,  # (N,) fp32
    bias_ptr,     # (N,) float (HAS_BIAS only)
    M, N, K,
    stride_am, stride_bn, stride_cm, stride_cn,
    M_BUCKET,     # autotune key only: next power of two of M, capped
    A_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 activations (no TF32); unused otherwise
    EVEN_K: tl.constexpr,
    SWAP_AB: tl.constexpr = False,  # W8A16 large-M configs set it (module docstring)
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_lo = pid_k * tiles_per_split * BLOCK_K
    k_hi = min(k_lo + tiles_per_split * BLOCK_K, K)

    if A_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    elif SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if USE_TMA:
        for k in range(k_lo, k_hi, BLOCK_K):
            a = a_ptr.load([pid_m * BLOCK_M, k])
            if SWAP_AB:
                w = b_ptr.load([pid_n * BLOCK_N, k])  # (BLOCK_N, BLOCK_K), converted in registers
                acc = tl.dot(w.to(a.dtype), a.T, acc, input_precision=DOT_PRECISION)
            elif A_INT8:
                acc = tl.dot(a, b_ptr.load([pid_n * BLOCK_N, k]).T, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, b_ptr.load([pid_n * BLOCK_N, k]).T.to(a.dtype), acc, input_precision=DOT_PRECISION)
    else:
        # Rows / columns past the edge wrap around instead of being masked: loads stay
        # in bounds and vectorized; the store masks them out.
        rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
        rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
        rk = tl.arange(0, BLOCK_K)
        a_rows = a_ptr + rm.to(tl.int64)[:, None] * stride_am
        if SWAP_AB:
            b_rows = b_ptr + rn.to(tl.int64)[:, None] * stride_bn  # (BLOCK_N, BLOCK_K) tiles: rows of W
        else:
            b_cols = b_ptr + rn.to(tl.int64)[None, :] * stride_bn  # (BLOCK_K, BLOCK_N) tiles
        for k in range(k_lo, k_hi, BLOCK_K):
            a_k = (k + rk)[None, :]
            if EVEN_K:
                a = tl.load(a_rows + a_k)
            else:
                a = tl.load(a_rows + a_k, mask=a_k < K, other=0)
            if SWAP_AB:
                if EVEN_K:
                    w = tl.load(b_rows + a_k)
                else:
                    w = tl.load(b_rows + a_k, mask=a_k < K, other=0)
                acc = tl.dot(w.to(a.dtype), tl.trans(a), acc, input_precision=DOT_PRECISION)
            else:
                if EVEN_K:
                    b = tl.load(b_cols + (k + rk)[:, None])
                else:
                    b = tl.load(b_cols + (k + rk)[:, None], mask=(k + rk)[:, None] < K, other=0)
                if A_INT8:
                    acc = tl.dot(a, b, acc, out_dtype=tl.int32)
                else:
                    acc = tl.dot(a, b.to(a.dtype), acc, input_precision=DOT_PRECISION)

    if SWAP_AB:
        acc = tl.trans(acc)  # (BLOCK_M, BLOCK_N): the epilogue's orientation
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    last = True
    if SPLIT_K > 1:
        last, acc = splitk_sum(acc, offs_m, offs_n, M, N, pid_k, pid, part_ptr, counter_ptr, SPLIT_K)
    if last:
        store_scaled(acc, offs_m, offs_n, M, N, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
                     stride_cm, stride_cn, A_INT8, HAS_BIAS)


gemm_kernel = triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})(_gemm_kernel)


def _tma_block_hook(nargs: dict) -> None:
    """Give the TMA descriptors the tile shape of the config being launched."""
    if nargs.get("USE_TMA"):
        nargs["a_ptr"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
        nargs["b_ptr"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


def cfg(bm: int, bn: int, bk: int, stages: int, warps: int, group_m: int = 8) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps)


TMA_MAX_BOX = 256  # elements per dimension of one TMA copy (cuTensorMapEncodeTiled's boxDim limit)


def with_tma_hook(configs: list[triton.Config]) -> list[triton.Config]:
    """The configs for the TMA mode: those whose tiles one TMA box can hold, with the
    pre_hook that sizes the descriptors. Only these carry a hook: Triton does not cache
    tuning results on disk for configs with hooks, so the pointer mode stays cached."""
    return [triton.Config(c.kwargs, num_stages=c.num_stages, num_warps=c.num_warps, pre_hook=_tma_block_hook)
            for c in configs if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) <= TMA_MAX_BOX]


def make_tuned(small: list[triton.Config], large: list[triton.Config]) -> dict:
    """(size class, use_tma) -> autotuned launcher; all wrap the same kernel."""
    return {(size, tma): autotune(with_tma_hook(cs) if tma else cs, TUNE_KEY, smem=tile_bytes())(gemm_kernel)
            for size, cs in (("small", small), ("large", large)) for tma in (False, True)}


def w8a8_large_m_configs() -> list[triton.Config]:
    """M > 32 on Hopper. int8 wgmma wants 128+ rows and >= 128 K per stage; a 128x256x128
    tile pipelined 3 deep is 144 KiB of the 227 KiB shared memory (TileBytes guard)."""
    return [
        cfg(128, 256, 128, 3, 8),
        cfg(256, 128, 128, 3, 8),
        cfg(128, 128, 128, 4, 8),
        cfg(128, 128, 128, 5, 4),
        cfg(128, 256, 64, 5, 8),
        cfg(64, 128, 128, 5, 4),
        cfg(64, 256, 128, 4, 8),
    ]


def w8a8_small_m_configs() -> list[triton.Config]:
    """M <= 32: the weight stream dominates; thin tiles, deep pipelines, many programs."""
    return [
        cfg(16, 64, 256, 4, 4),
        cfg(16, 128, 256, 4, 4),
        cfg(16, 64, 128, 6, 4),
        cfg(16, 32, 512, 4, 4),
        cfg(32, 64, 256, 4, 4),
        cfg(32, 128, 128, 5, 4),
    ]


SMALL_M = 32
_tuned = make_tuned(w8a8_small_m_configs(), w8a8_large_m_configs())


def m_bucket(m: int) -> int:
    """Tuning key for M: one bucket for every M <= 16 (the thin configs all use 16-32
    rows), then powers of two up to 4096; a new batch size rarely triggers a new tuning."""
    return 16 if m <= 16 else min(triton.next_power_of_2(m), 4096)


def default_split_k(m: int, n: int, k: int, device: torch.device) -> int:
    """Split K for small M when the (M, N) tiles alone leave SMs idle: aim for two thin
    (64-column) programs per SM, each still streaming >= 1024 of K."""
    if m > SMALL_M or device.type != "cuda":
        return 1
    sms = sm_count(device.index if device.index is not None else torch.cuda.current_device())
    tiles = triton.cdiv(n, 64)
    if tiles >= 2 * sms:
        return 1
    return max(1, min(8, triton.cdiv(2 * sms, tiles), k // 1024))


def tma_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    """TMA descriptors need 16-byte aligned bases and row strides."""
    return all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 and t.stride(1) == 1
               for t in (a, b))


def launch_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None, b_scale: torch.Tensor,
                bias: torch.Tensor | None, out: torch.Tensor, tuned: dict, split_k: int = 1,
                use_tma: bool = False, config: dict | None = None,
                counters: torch.Tensor | None = None) -> torch.Tensor:
    """Shared launcher of both modes. `tuned` is make_tuned's dict of autotuned kernels;
    `config` (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) bypasses tuning;
    `counters` (splitk.counters, kept per weight) serve a split-K launch (None: made for it)."""
    m, k = a.shape
    n = b.shape[0]
    if m == 0 or n == 0:
        return out
    a_int8 = a.dtype == torch.int8
    assert not (a_int8 and config is not None and config.get("SWAP_AB")), "SWAP_AB is a W8A16 mode"
    use_tma = use_tma and k > 0 and tma_ok(a, b)  # otherwise the pointer path serves
    split_k = max(1, min(split_k, triton.cdiv(k, 64)))
    dummy = b_scale  # stands in for absent optional pointers; never read
    assert split_k == 1 or config is None or min(config["BLOCK_M"], config["BLOCK_N"]) >= TILE_MIN, \
        "split-K tiles are >= 16"
    part, counters = scratch(split_k, m, n, torch.int32 if a_int8 else torch.float32, counters, a.device, dummy)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor
        # Placeholder block shapes; _tma_block_hook (or the explicit config below) sets them.
        a_arg = TensorDescriptor.from_tensor(a, [16, 16])
        b_arg = TensorDescriptor.from_tensor(b, [16, 16])
    else:
        a_arg, b_arg = a, b
    args = (a_arg, b_arg, out, part, counters, a_scale if a_scale is not None else dummy, b_scale,
            bias if bias is not None else dummy, m, n, k, a.stride(0), b.stride(0), out.stride(0), out.stride(1),
            m_bucket(m))
    flags = dict(A_INT8=a_int8, HAS_BIAS=bias is not None, SPLIT_K=split_k, USE_TMA=use_tma,
                 DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
                 **gpu_compile_options(a.device))
    if config is None:
        kernel = tuned[("small" if m <= SMALL_M else "large", use_tma)]
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), split_k)  # noqa: E731
        launch(kernel, grid, args, flags)
    else:
        meta = dict(config)
        if use_tma:
            a_arg.block_shape = [meta["BLOCK_M"], meta["BLOCK_K"]]
            b_arg.block_shape = [meta["BLOCK_N"], meta["BLOCK_K"]]
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), split_k)
        launch(gemm_kernel, grid, args, {**flags, **meta})
    return out


def int8_scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                   bias: torch.Tensor | None, out_dtype: torch.dtype, split_k: int | None = None,
                   use_tma: bool = False, config: dict | None = None,
                   counters: torch.Tensor | None = None) -> torch.Tensor:
    """a (M, K) int8, a_scale (M,) fp32, b (N, K) int8, b_scale (N,) fp32, bias (N,) or None
    -> (M, N) out_dtype. Inputs must have unit stride along K. split_k None: default_split_k;
    counters: b's split-K counters (splitk.counters), None: made per split-K call."""
    assert a.dtype == torch.int8 and b.dtype == torch.int8 and a.stride(1) == 1 and b.stride(1) == 1
    out = torch.empty((a.shape[0], b.shape[0]), device=a.device, dtype=out_dtype)
    if split_k is None:
        split_k = default_split_k(a.shape[0], b.shape[0], a.shape[1], a.device)
    return launch_gemm(a, b, a_scale, b_scale, bias, out, _tuned, split_k, use_tma, config, counters)
