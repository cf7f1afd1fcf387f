"""Weight layouts of the decode GEMVs (csrc/gemv), made from the public formats at swap time.

Pure torch functions, public format -> kernel layout, each with its inverse (for the tests).

The kernel gives each warp a tile of 16 output rows and streams that tile's weights in
batches of 256 values of K; a batch is `loads` 16-byte loads a lane (4 for int4, each
covering 64 K; 8 for int8, each covering 32 K). The layout stores, for each tile, batch,
load and lane (in that order), the 16 bytes that lane loads, arranged so they are its
mma.sync A fragments (lane = 4 * g + t; fragment rules in csrc/gemv/gemv_mma.cuh):

  int4 (W4A16)   word j of a load = k16 step j; nibble p (p = 0..3) and nibble p + 4 hold the
                 pair (k, k + 1) of fragment register p: row g + 8 * (p % 2), k = 16 j + 2 t +
                 8 * (p // 2). So (word >> 4p) & 0x000F000F puts both codes of a pair in place.
  int8 (W8A16)   q + 128 as bytes; words (2 s, 2 s + 1) = k16 step s; bytes (0, 1) of a word: row g,
                 bytes (2, 3): row g + 8, at k = 16 s + 8 * (word % 2) + 2 t (+ 1).
  int8 (W8A8)    q as bytes; word r = register r of the m16n8k32 A fragment: row g + 8 * (r % 2),
                 k = 16 * (r // 2) + 4 t + (0..3).

Rows are padded to a multiple of 16 and K to a multiple of 256; the padding holds codes that
dequantize to 0 (and int4 padding groups have scale 0). int4 scales and zeros are stored as
(tile, group, g, h) = the value of row 16 * tile + g + 8 h, so one 32-bit (fp16 scales) or
16-bit (uint8 zeros) load gives a lane both of its rows.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .int4 import SYMMETRIC_ZERO, unpack_int4

TILE_N = 16
BATCH_K = 256
WARPS = 4  # the fewest tiles a GEMV block has (kMinWarps in csrc/gemv): counters need ceil(n_tiles / WARPS)


# (chunk K, element maps) per format: row_in_tile[lane, e] and k_in_chunk[lane, e] of the
# e-th element (nibble or byte, in memory order) of a lane's 16-byte load.
@functools.lru_cache(maxsize=None)
def _lane_map(fmt: str) -> tuple[int, Tensor, Tensor]:
    lane = torch.arange(32)[:, None]
    g, t = lane // 4, lane % 4
    if fmt == "int4":
        e = torch.arange(32)[None, :]
        j, i = e // 8, e % 8  # word (k16 step), nibble
        p, second = i % 4, i // 4
        return 64, g + 8 * (p % 2), 16 * j + 2 * t + 8 * (p // 2) + second
    e = torch.arange(16)[None, :]
    w, b = e // 4, e % 4  # word, byte
    if fmt == "int8_w16":
        return 32, g + 8 * (b // 2), 16 * (w // 2) + 8 * (w % 2) + 2 * t + b % 2
    if fmt == "int8_w8":
        return 32, g + 8 * (w % 2), 16 * (w // 2) + 4 * t + b
    raise ValueError(f"unknown GEMV layout {fmt!r}")


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def _tiles(codes: Tensor, fmt: str, pad: int) -> Tensor:
    """(N, K) uint8 codes -> (n_tiles, batches * bytes a batch) uint8 in `fmt`'s lane order."""
    chunk, row, kk = _lane_map(fmt)
    n, k = codes.shape
    n_pad, k_pad = _round_up(max(n, 1), TILE_N), _round_up(max(k, 1), BATCH_K)
    c = F.pad(codes, (0, k_pad - k, 0, n_pad - n), value=pad)
    c = c.view(n_pad // TILE_N, TILE_N, k_pad // chunk, chunk).permute(0, 2, 1, 3)
    row, kk = row.to(c.device), kk.to(c.device)
    e = c[:, :, row, kk]  # (tiles, chunks, 32 lanes, elements)
    if fmt == "int4":
        e = e[..., 0::2] | (e[..., 1::2] << 4)
    return e.reshape(n_pad // TILE_N, -1).contiguous()


def _untiles(w: Tensor, fmt: str, n: int, k: int) -> Tensor:
    """The inverse of _tiles: (n_tiles, ...) uint8 -> (n, k) uint8 codes."""
    chunk, row, kk = _lane_map(fmt)
    tiles = w.shape[0]
    e = w.view(tiles, -1, 32, 16)
    if fmt == "int4":
        e = torch.stack((e & 0x0F, e >> 4), dim=-1).reshape(tiles, e.shape[1], 32, 32)
    c = torch.empty((tiles, e.shape[1], TILE_N, chunk), dtype=torch.uint8, device=w.device)
    c[:, :, row.to(w.device), kk.to(w.device)] = e
    return c.permute(0, 2, 1, 3).reshape(tiles * TILE_N, -1)[:n, :k]


def _rows_by_tile(v: Tensor, n_groups: int, pad: float | int) -> Tensor:
    """(N, G) per-row values -> (n_tiles, n_groups * 16) as (tile, group, g, h) = v[16 tile + g + 8 h]."""
    n, grp = v.shape
    n_pad = _round_up(max(n, 1), TILE_N)
    v = F.pad(v, (0, n_groups - grp, 0, n_pad - n), value=pad)
    return v.view(n_pad // TILE_N, 2, 8, n_groups).permute(0, 3, 2, 1).reshape(n_pad // TILE_N, -1).contiguous()


def _rows_untile(v: Tensor, n: int, groups: int) -> Tensor:
    tiles = v.shape[0]
    return v.view(tiles, -1, 8, 2).permute(0, 3, 2, 1).reshape(tiles * TILE_N, -1)[:n, :groups]


# ---------------------------------------------------------------- int4 (W4A16)
def int4_to_gemv(w_packed: Tensor, scales: Tensor, zeros: Tensor | None,
                 group_size: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """kernelswap.ops.int4 format -> (w, scales, zeros) of _C_int4_gemv."""
    n, kp = w_packed.shape[0], w_packed.shape[1] * 2
    k_pad = _round_up(max(kp, 1), BATCH_K)
    w = _tiles(unpack_int4(w_packed), "int4", SYMMETRIC_ZERO)
    groups = k_pad // group_size
    s = _rows_by_tile(scales, groups, 0.0)
    z = None if zeros is None else _rows_by_tile(zeros, groups, SYMMETRIC_ZERO)
    return w, s, z


def int4_from_gemv(w: Tensor, scales: Tensor, zeros: Tensor | None, n: int, kp: int,
                   group_size: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """The inverse of int4_to_gemv: back to (w_packed (n, kp // 2), scales, zeros)."""
    codes = _untiles(w, "int4", n, kp)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    groups = kp // group_size
    return (packed, _rows_untile(scales, n, groups),
            None if zeros is None else _rows_untile(zeros, n, groups))


# ---------------------------------------------------------------- int8 (W8A16, W8A8)
def int8_to_gemv(w_q: Tensor, activations_int8: bool) -> Tensor:
    """(N, K) int8 -> the weight of _C_int8_gemv (activations_int8, W8A8: q as bytes) or of
    _C_int8_weight_gemv (W8A16: q + 128 as bytes)."""
    if activations_int8:
        return _tiles(w_q.view(torch.uint8), "int8_w8", 0)
    return _tiles((w_q.to(torch.int16) + 128).to(torch.uint8), "int8_w16", 128)


def int8_from_gemv(w: Tensor, n: int, k: int, activations_int8: bool) -> Tensor:
    """The inverse of int8_to_gemv: (n, k) int8."""
    if activations_int8:
        return _untiles(w, "int8_w8", n, k).view(torch.int8)
    return (_untiles(w, "int8_w16", n, k).to(torch.int16) - 128).to(torch.int8)


def counters(n: int, device) -> Tensor:
    """The zeroed int32 scratch the GEMVs' split-K reduction counts arrivals in."""
    n_tiles = _round_up(max(n, 1), TILE_N) // TILE_N
    return torch.zeros(-(-n_tiles // WARPS), dtype=torch.int32, device=device)
