"""Split-K finished inside the GEMM launch: the last split of a tile sums the partials.

A small-M GEMM splits K over SPLIT_K programs per output tile when the tiles alone leave SMs
idle. Each program stores its raw partial accumulator in a (SPLIT_K, M, N) scratch buffer and
counts its arrival on the tile's int32 counter; the program that arrives last sums the
SPLIT_K partials in split order (int32 sums exact, fp32 sums deterministic: the same order and
result as a separate reduction kernel), runs the epilogue and puts the counter back to 0 for
the next launch. So a split-K call is one launch, not a GEMM and a reduction.

The counters must start at 0 and belong to one stream at a time: two launches sharing them
must not run concurrently. `counters(n, device)` makes a zeroed set big enough for any launch of
an (M <= MAX_M, N) problem with tiles of at least TILE_MIN x TILE_MIN; kernelswap.ops keeps one
per weight, made when the layer's buffers are made or moved, so a call under CUDA-graph capture
allocates none. A launcher given no counters makes a zeroed set for that call.

Ordering (the pattern of CUTLASS's split-K semaphore): a CTA barrier after the partial stores,
then one thread's acquire-release atomic at GPU scope; the last program reads the other
partials through L2 (cache modifier .cg), after the atomic's result is broadcast to the CTA.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_M = 64  # rows a split-K launch may have (int8_gemm.SMALL_M, sparse24_gemv's tensor-core mode; W4A16: 16)
TILE_MIN = 16  # the smallest BLOCK_M and BLOCK_N of a split-K config


def max_tiles(m: int, n: int, block_m: int = TILE_MIN) -> int:
    """Output tiles of an (m, n) launch at most: rows in tiles of block_m, columns of >= TILE_MIN."""
    return triton.cdiv(max(m, 1), block_m) * triton.cdiv(max(n, 1), TILE_MIN)


def counters(n: int, device: torch.device | str) -> torch.Tensor:
    """Zeroed int32 tile counters for every split-K launch of up to (MAX_M, n) outputs (in tiles of
    TILE_MIN rows, or of one row for M <= MAX_M // TILE_MIN)."""
    return torch.zeros(max_tiles(MAX_M, n), dtype=torch.int32, device=device)


def check_counters(c: torch.Tensor | None, tiles: int, device: torch.device) -> torch.Tensor:
    """`c` when it holds `tiles` counters, or a zeroed set made for this call when c is None."""
    if c is None:
        return torch.zeros(tiles, dtype=torch.int32, device=device)
    assert c.dtype == torch.int32 and c.is_contiguous() and c.numel() >= tiles and c.device == device, \
        f"split-K counters: {c.numel()} int32 on {c.device} cannot serve {tiles} tiles on {device}"
    return c


def widest(configs) -> int:
    """The largest SPLIT_K of some autotune configs: the autotuner picks one inside the launch, so
    the launcher sizes the partials for this one."""
    return max(c.kwargs.get("SPLIT_K", 1) for c in configs)


def scratch(split_k: int, m: int, n: int, acc_dtype: torch.dtype, counters: torch.Tensor | None,
            device: torch.device, dummy: torch.Tensor, block_m: int = TILE_MIN) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials, counters) for a launch of up to `split_k` splits over (m, n) outputs in row tiles of
    block_m: a (split_k, m, n) acc_dtype buffer and check_counters' set; at split_k == 1 `dummy` for
    both (the kernel reads neither)."""
    if split_k == 1:
        return dummy, dummy
    part = torch.empty((split_k, m, n), device=device, dtype=acc_dtype)
    return part, check_counters(counters, max_tiles(m, n, block_m), device)


@triton.jit
def splitk_sum(acc, offs_m, offs_n, M, N, pid_k, tile, part_ptr, counter_ptr, SPLIT_K: tl.constexpr):
    """Store this split's partial `acc` (BLOCK_M, BLOCK_N) of the output tile (offs_m, offs_n) into
    part_ptr's (SPLIT_K, M, N) buffer and count it on counter_ptr[tile]. Returns (last, total): `last`
    is true in the one program that arrived after every other split of the tile, and `total` is
    then the sum of the SPLIT_K partials in split order (elsewhere: acc, not to be used)."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    return splitk_sum_at(acc, offs, mask, M, N, pid_k, tile, part_ptr, counter_ptr, SPLIT_K)


@triton.jit
def splitk_sum_at(acc, offs, mask, M, N, pid_k, tile, part_ptr, counter_ptr, SPLIT_K: tl.constexpr):
    """splitk_sum for an accumulator of any shape or orientation: `offs` (int64) and `mask`, of acc's
    shape, place each element in the (M, N) row-major plane of one split (row * N + column), so a
    kernel passes the offsets its own output store uses and keeps acc's layout as it is."""
    stride = ((pid_k * 0).to(tl.int64) + M) * N  # int64 whether or not M arrives as a constant
    ptrs = part_ptr + offs
    tl.store(ptrs + pid_k.to(tl.int64) * stride, acc, mask=mask)
    tl.debug_barrier()  # every thread's partial is stored before the release below
    arrived = tl.atomic_add(counter_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = arrived == SPLIT_K - 1
    total = acc
    if last:
        total = tl.load(ptrs, mask=mask, other=0, cache_modifier=".cg")
        for s in tl.static_range(1, SPLIT_K):
            total += tl.load(ptrs + s * stride, mask=mask, other=0, cache_modifier=".cg")
        tl.store(counter_ptr + tile, 0)  # ready for the next launch (which starts after this one ends)
    return last, total
