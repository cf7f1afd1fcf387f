"""The 2:4 weight in the layout of the Ampere (sm_80+, mma.sp) CUTLASS GEMMs of kernelswap._C.

From the public format (kernelswap.ops.sparse24: values (N, Kp // 2), meta (N, Kp // 8)
with one nibble i0 | i1 << 2 per group of four, the even group in the low nibble), which
already holds the nibbles mma.sp reads, in the order it reads them along K:

  values  (N, K_pad // 2)  zero-padded to K_pad, a multiple of the GEMM's K tile (64 for
          16-bit values, 128 for int8);
  meta    the metadata words, reordered for ldmatrix: per row, the nibbles packed
          little-endian into 16-bit words (16-bit values: 4 groups a word) or 32-bit
          words (int8: 8 groups); then CUTLASS's `reorder_meta`
          (cutlass/util/host_reorder.h): within each block of 32 rows (16 for 32-bit
          words) row m moves to (m % 8) * 4 + m // 8 ((m % 8) * 2 + m // 8), the 2x2
          blocks of (row, word) pairs are swapped from Z to N order (an even row's odd
          word trades places with the next row's even word), and the words are stored
          ColumnMajorInterleaved<2>: pairs of words, row after row, pair-column after
          pair-column. Kept as (N, K_pad // 8) uint8, the same bytes as the public meta.
  Padded groups get the nibble 0b0100 (positions 0 and 1) over zero values.

N must be a multiple of the row block (32 / 16): the blocks cannot be cut. Made once
per weight buffer on the GPU (ops/sparse24_cuda.py caches it), a few index ops.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

PAD_NIBBLES = 0x44  # two groups, each keeping positions 0 and 1


def word_bytes(dtype: torch.dtype) -> int:
    """Bytes of one metadata word: mma.sp reads 16-bit words for 16-bit values, 32-bit for int8."""
    return 4 if dtype == torch.int8 else 2


def row_block(dtype: torch.dtype) -> int:
    """Rows that reorder_meta shuffles together (N must be a multiple)."""
    return 16 if dtype == torch.int8 else 32


def k_tile(dtype: torch.dtype) -> int:
    """The GEMM's K tile (csrc/sm80/gemm_sm80.cuh Config): K_pad is a multiple of it."""
    return 128 if dtype == torch.int8 else 64


@functools.lru_cache(maxsize=None)
def _pair_order(rows: int) -> tuple[int, ...]:
    """Within one block of `rows` rows and one pair of words: for each destination slot
    (row * 2 + word), the source slot it takes (reorder_meta, module docstring)."""
    interweave = 4 if rows == 32 else 2
    order = [0] * (2 * rows)
    for m in range(rows):
        for kp in range(2):
            r, c = (m % 8) * interweave + m // 8, kp
            if r % 2 == 0 and c % 2 == 1:
                r, c = r + 1, c - 1
            elif r % 2 == 1 and c % 2 == 0:
                r, c = r - 1, c + 1
            order[r * 2 + c] = m * 2 + kp
    return tuple(order)


def reorder_meta(words: Tensor) -> Tensor:
    """(N, W) metadata words (int16 / int32; N a multiple of the row block, W even) ->
    the same words in CUTLASS's order (a flat, contiguous tensor)."""
    n, w = words.shape
    rows = 32 if words.element_size() == 2 else 16
    if n % rows or w % 2:
        raise ValueError(f"reorder_meta: ({n}, {w}) words; N must be a multiple of {rows} and W even")
    blocks = words.reshape(n // rows, rows, w // 2, 2).permute(2, 0, 1, 3).reshape(w // 2, n // rows, 2 * rows)
    order = torch.tensor(_pair_order(rows), device=words.device)
    return blocks.index_select(2, order).reshape(-1)


def prepare(values: Tensor, meta: Tensor) -> tuple[Tensor, Tensor]:
    """Public (values, meta) -> the sm80 GEMM's (values, meta); see the module docstring."""
    n, kp = values.shape[0], values.shape[1] * 2
    if n % row_block(values.dtype):
        raise ValueError(f"sparse24 sm80 layout: N={n} is not a multiple of {row_block(values.dtype)}")
    k_pad = -(-kp // k_tile(values.dtype)) * k_tile(values.dtype)
    v = values.new_zeros((n, k_pad // 2))
    v[:, : kp // 2] = values
    e = meta.new_full((n, k_pad // 8), PAD_NIBBLES)
    e[:, : kp // 8] = meta
    words = e.view(torch.int32 if word_bytes(values.dtype) == 4 else torch.int16)
    return v, reorder_meta(words).view(torch.uint8).reshape(n, k_pad // 8)
