"""save / load of a model sharded with ks.parallel's styles (and torch's, for unswapped layers).

save(model, path)              gathers every shard (a collective: call it on every rank)
                               and rank 0 writes the full model in ks.save's format: the
                               file loads with ks.load into a float model on one device,
                               or with load() below into a model sharded any other way.
save(model, path, full=False)  each rank writes its own shards, with ks.save's format and
                               checks, to `rank_path(path, rank, world)`.
load(model, path)              fills an already swapped and sharded model from a full
                               file: each rank reads it and keeps its shards (no
                               collective). full=False reads this rank's own file, which
                               must come from the same sharding.
Loading into the float model first (ks.load on every rank) and sharding after also works.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .. import serialization
from ..nn import KernelswapModule
from . import shard as S
from .style import MESH_ATTR, SPEC_ATTR


def rank_path(path: str | os.PathLike, rank: int, world: int) -> str:
    """model.safetensors -> model.rank0-of-2.safetensors"""
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}.rank{rank}-of-{world}{ext or '.safetensors'}"


def _sharded(model: nn.Module):
    for name, m in model.named_modules():
        spec = getattr(m, SPEC_ATTR, None)
        if spec is not None:
            yield (name + "." if name else ""), m, spec


def _all_gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    """Every rank's `t` (same dim count, any sizes), in rank order."""
    world = dist.get_world_size(group)
    shape = torch.tensor(t.shape, dtype=torch.int64, device=t.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    biggest = torch.stack(shapes).amax(0).tolist()
    pad = [p for d in reversed(range(t.dim())) for p in (0, biggest[d] - t.shape[d])]
    padded = F.pad(t, pad) if t.dim() else t
    got = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(got, padded.contiguous(), group=group)
    return [g[tuple(slice(0, s) for s in shp.tolist())] for g, shp in zip(got, shapes)]


def _gather_module(m: KernelswapModule, spec: S.ShardSpec) -> dict[str, torch.Tensor | None]:
    """The full layer's buffers, on every rank (rank 0's bias for a row-wise layer)."""
    group = getattr(m, MESH_ATTR).get_group()
    local = dict(m._buffers)
    every = [dict(local) for _ in range(spec.world)]
    for name, t in local.items():
        if t is None or name == "format_version" or (spec.style == "rowwise" and name == "bias"):
            continue
        for r, piece in enumerate(_all_gather(t, group)):
            every[r][name] = piece
    size = spec.out_features if spec.style == "colwise" else spec.in_features
    specs = [dataclasses.replace(spec, rank=r, start=a, stop=b)
             for r, (a, b) in enumerate(S.chunk(size, spec.world, r) for r in range(spec.world))]
    full = S.unshard_buffers(m, every, specs)
    if spec.style == "rowwise" and spec.world > 1:  # rank 0 holds the bias: every rank gets it
        bias = [full.get("bias")]
        dist.broadcast_object_list(bias, group=group, group_src=0)
        full["bias"] = None if bias[0] is None else bias[0].to(local["format_version"].device)
    return full


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model's state_dict on CPU, gathered one layer at a time (every rank calls it)."""
    state = model.state_dict()
    for prefix, m, spec in _sharded(model):
        for k in [k for k in state if k.startswith(prefix) and "." not in k[len(prefix):]]:
            del state[k]
        for name, t in _gather_module(m, spec).items():
            if t is not None:
                state[prefix + name] = t.cpu()
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu() for k, v in state.items()}


def save(model: nn.Module, path: str | os.PathLike, *, full: bool = True) -> None:
    """Write a sharded model: the full model from rank 0 (full=True), or each rank's shards."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if not full:
        local = {k: (v.to_local() if isinstance(v, DTensor) else v) for k, v in model.state_dict().items()}
        serialization.save(model, rank_path(path, rank, world), state_dict=local)
        return
    state = full_state_dict(model)
    error = [None]
    if rank == 0:
        try:
            serialization.save(model, path, state_dict=state)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = [f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:  # every rank raises, none waits for a rank that failed
        raise RuntimeError(f"ks.parallel.save: rank 0 could not write {os.fspath(path)!r}: {error[0]}")


def load(model: nn.Module, path: str | os.PathLike, *, full: bool = True) -> nn.Module:
    """Fill a swapped, sharded model from a full ks.save file (or this rank's own file); returns model."""
    if not full:
        path = rank_path(path, dist.get_rank(), dist.get_world_size())
    groups, tensors = serialization._read(path)
    where = f"ks.parallel.load: {os.fspath(path)!r}"
    _check_recipes(where, model, groups)
    have = model.state_dict()
    if full:
        for prefix, m, spec in _sharded(model):
            names = [k for k in m._buffers]
            whole = {k: tensors.pop(prefix + k, None) for k in names}
            if any(whole[k] is None for k, b in m._buffers.items() if b is not None and k != "bias"):
                continue  # the file lacks a tensor of this layer: _check_state names it
            for k, t in S.shard_buffers(m, whole, spec).items():
                if t is not None:
                    tensors[prefix + k] = t
    for k, v in have.items():
        if isinstance(v, DTensor) and k in tensors:
            t = tensors[k].to(v.device)
            tensors[k] = (distribute_tensor(t, v.device_mesh, v.placements, src_data_rank=None) if full else
                          DTensor.from_local(t, v.device_mesh, v.placements, shape=v.shape, stride=v.stride()))
    serialization._check_state(where, have, tensors)
    model.load_state_dict(tensors, strict=True)
    return model


def _check_recipes(where: str, model: nn.Module, groups: list[tuple[dict, list[str]]]) -> None:
    modules = dict(model.named_modules())
    for cfg, names in groups:
        for n in names:
            m = modules.get(n)
            got = m.recipe_config() if isinstance(m, KernelswapModule) else None
            if got != cfg:
                raise ValueError(f"{where}: the file swapped layer {n!r} with {json.dumps(cfg)}, but this model has "
                                 f"{type(m).__name__ if m is not None else 'nothing'} there" +
                                 (f" ({json.dumps(got)})" if got else "") +
                                 "; swap the model with the file's recipes before sharding it")


__all__ = ["full_state_dict", "load", "rank_path", "save"]
