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

  2:4 (bf16/fp16) 9 loads a batch. Loads 0-7, word w of load u: the kept pair (v0 | v1 << 16) of
                 row g + 8 * (w % 2), group 4 s + t of the batch (K 16 s + 4 t .. + 3), s = 2 u + w // 2.
                 Load 8, byte s: the nibbles of that group, row g low, row g + 8 high.
  2:4 int8       5 loads a batch. Loads 0-3, word w of load u, s = 2 u + w // 2 (k32 step), c = w % 2:
                 the kept pairs (bytes v0, v1) of group 8 s + 4 c + t of the batch, row g in bytes 0-1,
                 row g + 8 in bytes 2-3. Load 4, 16-bit half s: the nibbles of (row g, group 8 s + t),
                 (row g + 8, same), (row g, group 8 s + 4 + t), (row g + 8, same), low to high.

Rows are padded to a multiple of 16 and K to a multiple of 256; the padding holds codes that
dequantize to 0 (and int4 padding groups have scale 0; 2:4 padding groups keep zeros at
positions 0 and 1). int4 scales and zeros are stored as
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
    _C_int8_weight_gemv (W8A16: q + 128 as bytes). Made only where the GEMVs cannot read the
    (N, K) weight itself (K % 16 != 0, an unaligned buffer; ops/gemv_cuda.INT8_ROW_MAJOR)."""
    if activations_int8:
        return _tiles(w_q.view(torch.uint8), "int8_w8", 0)
    return _tiles((w_q.to(torch.int16) + 128).to(torch.uint8), "int8_w16", 128)


def int8_from_gemv(w: Tensor, n: int, k: int, activations_int8: bool) -> Tensor:
    """The inverse of int8_to_gemv: (n, k) int8."""
    if activations_int8:
        return _untiles(w, "int8_w8", n, k).view(torch.int8)
    return (_untiles(w, "int8_w16", n, k).to(torch.int16) - 128).to(torch.int8)


# ---------------------------------------------------------------- 2:4 bf16 / fp16
SPARSE24_LOADS = 9
_PAD_NIBBLE = 0 | 1 << 2  # positions 0 and 1 (the values there are zero)


def _nibbles(meta: Tensor) -> Tensor:
    """(N, Kp // 8) uint8 -> (N, Kp // 4) uint8, one nibble a group, in K order."""
    return torch.stack((meta & 0x0F, meta >> 4), dim=-1).reshape(meta.shape[0], -1)


def _padded_groups(values: Tensor, meta: Tensor, pair: torch.dtype) -> tuple[Tensor, Tensor, int, int]:
    """Each group's kept pair as one `pair` word (N_pad, G_pad) and its nibble (N_pad, G_pad), rows
    padded to tiles and groups to batches (padding: zero pairs, positions 0 and 1); tiles, batches."""
    n, groups = values.shape[0], values.shape[1] // 2
    n_pad, g_pad = _round_up(max(n, 1), TILE_N), _round_up(max(groups, 1), BATCH_K // 4)
    pairs = F.pad(values.contiguous().view(pair), (0, g_pad - groups, 0, n_pad - n))
    nib = F.pad(_nibbles(meta), (0, g_pad - groups, 0, n_pad - n), value=_PAD_NIBBLE)
    return pairs, nib, n_pad // TILE_N, g_pad // (BATCH_K // 4)


def sparse24_to_gemv(values: Tensor, meta: Tensor) -> Tensor:
    """kernelswap.ops.sparse24's (values (N, Kp // 2) bf16 / fp16, meta (N, Kp // 8) uint8) -> the
    weight of _C_sparse24_gemv: (ceil(N / 16), batches * 9 * 32 * 16) uint8."""
    pairs, nib, tiles, batches = _padded_groups(values, meta, torch.int32)
    # row = 16 T + 8 h + g, group = 64 B + 4 s + t, s = 2 u + sw
    v = pairs.view(tiles, 2, 8, batches, 8, 2, 4).permute(0, 3, 4, 2, 6, 5, 1)  # T B u g t sw h
    v = v.reshape(tiles, batches, 8, 32 * 4).contiguous().view(torch.uint8)  # (T, B, 8 loads, 32 lanes x 16)
    m = nib.view(tiles, 2, 8, batches, 16, 4)
    m = (m[:, 0] | (m[:, 1] << 4)).permute(0, 2, 1, 4, 3)  # T B g t s
    m = m.reshape(tiles, batches, 1, 32 * 16)
    return torch.cat((v, m), dim=2).reshape(tiles, -1).contiguous()


SPARSE24_INT8_LOADS = 5


def sparse24_int8_to_gemv(values: Tensor, meta: Tensor) -> Tensor:
    """kernelswap.ops.sparse24's int8 (values (N, Kp // 2), meta (N, Kp // 8)) -> the weight of
    _C_sparse24_int8_gemv: (ceil(N / 16), batches * 5 * 32 * 16) uint8."""
    pairs, nib, tiles, batches = _padded_groups(values, meta, torch.int16)
    # row = 16 T + 8 h + g, group = 64 B + 8 s + 4 c + t, s = 2 u + sw; word index 2 sw + c, half h
    v = pairs.view(tiles, 2, 8, batches, 4, 2, 2, 4).permute(0, 3, 4, 2, 7, 5, 6, 1)  # T B u g t sw c h
    v = v.reshape(tiles, batches, 4, 32 * 8).contiguous().view(torch.uint8)  # (T, B, 4 loads, 32 lanes x 16)
    m = nib.view(tiles, 2, 8, batches, 8, 2, 4)  # T h g B s c t
    m = (m[:, 0] | (m[:, 1] << 4)).permute(0, 2, 1, 5, 3, 4)  # T B g t s c: byte 2 s + c of a lane
    m = m.reshape(tiles, batches, 1, 32 * 16)
    return torch.cat((v, m), dim=2).reshape(tiles, -1).contiguous()


def _unpadded_groups(pairs: Tensor, m: Tensor, n: int, groups: int) -> tuple[Tensor, Tensor]:
    """The inverses' common end: the (tiles x 16, groups_pad) pairs and the (T, g, ...) nibble bytes
    (row g low, g + 8 high, groups in K order) -> (pairs (n, groups), meta (n, groups // 2))."""
    nib = torch.stack((m & 0x0F, m >> 4), dim=1).reshape(pairs.shape)  # T h g (groups)
    pairs, nib = pairs[:n, :groups], nib[:n, :groups]
    return pairs.contiguous(), (nib[:, 0::2] | (nib[:, 1::2] << 4)).contiguous()


def sparse24_int8_from_gemv(w: Tensor, n: int, kp: int) -> tuple[Tensor, Tensor]:
    """The inverse of sparse24_int8_to_gemv: (values (n, kp // 2) int8, meta (n, kp // 8))."""
    tiles, groups = w.shape[0], kp // 4
    e = w.view(tiles, -1, SPARSE24_INT8_LOADS, 32 * 16)
    batches = e.shape[1]
    v = e[:, :, :4].contiguous().view(torch.int16).view(tiles, batches, 4, 8, 4, 2, 2, 2)  # T B u g t sw c h
    pairs = v.permute(0, 7, 3, 1, 2, 5, 6, 4).reshape(tiles * TILE_N, batches * 64)  # T h g B u sw c t
    m = e[:, :, 4].reshape(tiles, batches, 8, 4, 8, 2).permute(0, 2, 1, 4, 5, 3)  # T g B s c t
    values, meta = _unpadded_groups(pairs, m, n, groups)
    return values.view(torch.int8), meta


def sparse24_from_gemv(w: Tensor, n: int, kp: int) -> tuple[Tensor, Tensor]:
    """The inverse of sparse24_to_gemv: (values (n, kp // 2) as int16 bits, meta (n, kp // 8))."""
    tiles, groups = w.shape[0], kp // 4
    e = w.view(tiles, -1, SPARSE24_LOADS, 32 * 16)
    batches = e.shape[1]
    v = e[:, :, :8].contiguous().view(torch.int32).view(tiles, batches, 8, 8, 4, 2, 2)  # T B u g t sw h
    pairs = v.permute(0, 6, 3, 1, 2, 5, 4).reshape(tiles * TILE_N, batches * 64)  # T h g B u sw t
    m = e[:, :, 8].reshape(tiles, batches, 8, 4, 16).permute(0, 2, 1, 4, 3)  # T g B s t
    values, meta = _unpadded_groups(pairs, m, n, groups)
    return values.view(torch.int16), meta


def counters(n: int, device) -> Tensor:
    """The zeroed int32 scratch the GEMVs' split-K reduction counts arrivals in."""
    n_tiles = _round_up(max(n, 1), TILE_N) // TILE_N
    return torch.zeros(-(-n_tiles // WARPS), dtype=torch.int32, device=device)
