"""Per-module sharding rules: which rows or columns of each buffer a rank keeps.

Weights are (N, K) as in nn.Linear. A rank's slice of a dimension of size S over W
ranks follows torch.chunk (what DTensor's Shard(d) does): chunk c = ceil(S / W), rank r
holds [r * c, min((r + 1) * c, S)). A row-wise layer must use that rule along K,
because its input is the Shard(-1) output of the column-wise layer before it.

column-wise (along N)  every buffer is (N, ...): keep rows [start, stop) of each.
row-wise (along K)     per format:
  Int8Linear      w_q columns [start, stop); w_scale whole; bias on rank 0 only.
                  W8A8 ("int8") also appends zero columns to w_q (amax_columns: at least
                  one, up to a multiple of AMAX_ALIGN): the style's input hook puts the
                  all-reduced per-token max|x| there, so the op's own quantization finds
                  the one-device scale (style.py). 2:4-int8 gets the same empty groups.
  Int4Linear      packed bytes, scales and zeros of whole groups: c must be a multiple of
                  group_size (groups are never cut, nor a packed byte, group_size being even).
  Sparse24Linear  whole groups of four (c a multiple of 4); values and metadata nibbles are
                  re-packed per shard, each padded to its own multiple of 8 columns.
A split that would cut a group is refused, naming the layer and the sizes.

`shard_buffers` is pure (full buffers in, local buffers out), so ks.parallel.load reshards
a full file with the same code; `unshard_buffers` is its inverse (checkpoint.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn import Int4Linear, Int8Linear, KernelswapModule, Sparse24Linear
from ..ops.int4 import GROUP_SIZES
from ..ops.sparse24 import K_MULTIPLE, meta_indices

# A row-wise W8A8 layer's extra input columns (carrying the all-reduced max|x| against zero
# weights) end its K on a multiple of 32: the CUDA extension's int8 GEMMs need K % 16 (W8A8)
# and K % 32 (2:4 int8; ops/cuda_ext.py ALIGN_KN, ALIGN_K_SPARSE_INT8), 2:4 rows K % 8.
AMAX_ALIGN = 32
_EMPTY_NIBBLE = 0b0100  # positions 0 and 1: a valid nibble for an all-zero group
LINEARS = (Int8Linear, Int4Linear, Sparse24Linear)


@dataclass(frozen=True)
class ShardSpec:
    """Where one rank's shard of one layer sits in the full layer."""
    style: str  # "colwise" (along N) or "rowwise" (along K)
    rank: int
    world: int
    in_features: int  # the full layer's
    out_features: int
    start: int  # this rank's slice of N (colwise) or K (rowwise)
    stop: int
    amax_columns: int = 0  # row-wise W8A8: input columns holding the all-reduced max|x|

    @property
    def local_in(self) -> int:
        """in_features of the local module's own input (without the max|x| columns)."""
        return self.stop - self.start if self.style == "rowwise" else self.in_features


def chunk(size: int, world: int, rank: int) -> tuple[int, int]:
    """torch.chunk's slice [start, stop) of `size` for `rank` of `world`."""
    c = math.ceil(size / world)
    start = min(rank * c, size)
    return start, min(start + c, size)


def _is_w8a8(module) -> bool:
    return (isinstance(module, Int8Linear) and module.mode == "int8") or \
        (isinstance(module, Sparse24Linear) and module.int8)


def plan(module, style: str, rank: int, world: int, who: str) -> ShardSpec:
    """The shard of `module` for `rank`, or a ValueError (the same on every rank) naming the layer."""
    if not isinstance(module, LINEARS):
        raise NotImplementedError(f"{who}: {type(module).__name__} is not a kernelswap linear layer "
                                  f"({', '.join(c.__name__ for c in LINEARS)}); torch's own styles take nn.Linear "
                                  f"and nn.Embedding (and ks.parallel's styles hand those to them)")
    n, k = module.out_features, module.in_features
    size = n if style == "colwise" else k
    c = math.ceil(size / world)
    where = f"{who}: {module.where} ({'out' if style == 'colwise' else 'in'}_features={size})"
    if (world - 1) * c >= size:
        raise ValueError(f"{where} cannot be split over {world} ranks: torch.chunk gives {c} features a rank, "
                         f"so rank {world - 1} would get none; shard it over fewer ranks or leave it unsharded")
    if style == "rowwise" and world > 1:
        _check_row_split(module, where, c, world)
    start, stop = chunk(size, world, rank)
    amax = 0
    if style == "rowwise" and _is_w8a8(module):
        stored = _stored_k(module, stop - start)
        amax = -stored % AMAX_ALIGN or AMAX_ALIGN  # at least one column
    return ShardSpec(style, rank, world, k, n, start, stop, amax)


def _check_row_split(module, where: str, c: int, world: int) -> None:
    if isinstance(module, Int4Linear):
        g = module.group_size
        if c % g:
            fits = [s for s in GROUP_SIZES if c % s == 0]
            raise ValueError(f"{where}, group_size={g}: split along K over {world} ranks, each rank takes {c} "
                             f"input features (torch.chunk, the layout of the Shard(-1) input), which cuts the "
                             f"int4 groups of {g}; ceil(K / ranks) must be a multiple of group_size. " +
                             (f"Swap this layer with ks.Int4(group_size={fits[-1]}) or " if fits else "") +
                             "shard over another number of ranks")
    elif isinstance(module, Sparse24Linear) and c % 4:
        raise ValueError(f"{where}: split along K over {world} ranks, each rank takes {c} input features "
                         f"(torch.chunk, the layout of the Shard(-1) input), which cuts the 2:4 groups of four; "
                         f"ceil(K / ranks) must be a multiple of 4: shard over another number of ranks, or leave "
                         f"this layer unsharded")


# ---------------------------------------------------------------- 2:4 groups <-> packed rows
def _groups_24(values: Tensor, meta: Tensor) -> tuple[Tensor, Tensor]:
    """(values (N, Kp // 2), meta (N, Kp // 8)) -> (kept values (N, G, 2), nibbles (N, G)), G = Kp // 4."""
    idx = meta_indices(meta)
    return values.reshape(values.shape[0], -1, 2), (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)


def _pack_24(vals: Tensor, nibbles: Tensor, extra_columns: int = 0) -> tuple[Tensor, Tensor]:
    """Inverse of _groups_24: pads the groups (zero values, a valid nibble) to a multiple of 8
    columns, then appends `extra_columns` (a multiple of 8) of empty groups."""
    n, g = nibbles.shape
    total = math.ceil(g * 4 / K_MULTIPLE) * K_MULTIPLE // 4 + extra_columns // 4
    vals = F.pad(vals, (0, 0, 0, total - g))
    nibbles = F.pad(nibbles, (0, total - g), value=_EMPTY_NIBBLE)
    return vals.reshape(n, total * 2).contiguous(), (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).contiguous()


# ---------------------------------------------------------------- full <-> local buffers
def shard_buffers(module: KernelswapModule, full: dict[str, Tensor | None], spec: ShardSpec) -> dict:
    """The local buffers of `spec`'s rank, cut from the full layer's buffers (same names)."""
    s, e = spec.start, spec.stop
    out = dict(full)
    if spec.style == "colwise":
        for name, t in full.items():
            if t is not None and name != "format_version":
                out[name] = t[s:e].contiguous()
        return out
    if spec.rank != 0:
        out["bias"] = None  # added once: by rank 0, before the all-reduce
    if isinstance(module, Int8Linear):
        out["w_q"] = F.pad(full["w_q"][:, s:e], (0, spec.amax_columns)).contiguous()
    elif isinstance(module, Int4Linear):
        g = module.group_size
        gs, ge = s // g, math.ceil(e / g)
        out["w_packed"] = full["w_packed"][:, gs * g // 2: ge * g // 2].contiguous()
        for name in ("scales", "zeros"):
            if full.get(name) is not None:
                out[name] = full[name][:, gs:ge].contiguous()
    elif isinstance(module, Sparse24Linear):
        vals, nibbles = _groups_24(full["values"], full["meta"])
        gs, ge = s // 4, math.ceil(e / 4)
        out["values"], out["meta"] = _pack_24(vals[:, gs:ge], nibbles[:, gs:ge], spec.amax_columns)
    return out


def _stored_k(module, k: int) -> int:
    """The K a layer's weight rows hold for k input features (2:4 rows pad to K_MULTIPLE)."""
    return math.ceil(k / K_MULTIPLE) * K_MULTIPLE if isinstance(module, Sparse24Linear) else k


def local_features(module, spec: ShardSpec) -> tuple[int, int]:
    """(in_features, out_features) of the local module: what its forward checks its input against."""
    if spec.style == "colwise":
        return spec.in_features, spec.stop - spec.start
    k = spec.stop - spec.start
    if spec.amax_columns:
        k = _stored_k(module, k) + spec.amax_columns
    return k, spec.out_features


def unshard_buffers(module: KernelswapModule, shards: list[dict[str, Tensor | None]],
                    specs: list[ShardSpec]) -> dict[str, Tensor | None]:
    """Inverse of shard_buffers: the full layer's buffers from every rank's local ones (in rank order)."""
    first = shards[0]
    out = dict(first)
    if specs[0].style == "colwise":
        for name, t in first.items():
            if t is not None and name != "format_version":
                out[name] = torch.cat([sh[name] for sh in shards])
        return out
    if isinstance(module, Int8Linear):
        out["w_q"] = torch.cat([sh["w_q"][:, : sp.stop - sp.start] for sh, sp in zip(shards, specs)], 1)
    elif isinstance(module, Int4Linear):
        for name in ("w_packed", "scales", "zeros"):
            if first.get(name) is not None:
                out[name] = torch.cat([sh[name] for sh in shards], 1)
    elif isinstance(module, Sparse24Linear):
        parts = [_groups_24(sh["values"], sh["meta"]) for sh in shards]
        keep = [math.ceil((sp.stop - sp.start) / 4) for sp in specs]
        out["values"], out["meta"] = _pack_24(torch.cat([v[:, :g] for (v, _), g in zip(parts, keep)], 1),
                                              torch.cat([m[:, :g] for (_, m), g in zip(parts, keep)], 1))
    return out
