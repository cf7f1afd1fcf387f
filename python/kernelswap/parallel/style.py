"""ColwiseParallel / RowwiseParallel for kernelswap's linear layers, used with torch's own
`parallelize_module` and `DeviceMesh` next to torch's styles.

They subclass torch's styles (same arguments: input_layouts, output_layouts,
use_local_output; same defaults) and mirror their structure: `_apply(module, device_mesh)`
shards the module and installs a forward pre-hook and a forward hook that do the
collectives torch's styles do. nn.Linear and nn.Embedding (layers a recipe left alone) go
to torch's own implementation, so one plan can name every projection.

Local shards, not DTensor buffers. torch's styles turn each weight into a DTensor and let
DTensor dispatch the module's matmul. kernelswap's buffers stay plain tensors holding
this rank's shard, and the module's in_features / out_features become the local sizes
(rules in kernelswap.parallel.shard): its forward, unchanged, calls the kernelswap op on
plain tensors, so the op keeps its fast path (no dispatcher, no DTensor dispatch per
call), its CUDA-graph safety, and its kernels, which take plain tensors. The hooks turn
the layer's input into the local tensor the shard needs and its local output into the
layout asked for. torch's `distribute_module` is not used because it wraps every buffer
left plain as a Replicate DTensor; `_distribute` below installs the same hooks without that.

Column-wise (N split): input Replicate -> local output Shard(-1); no collective in the
  default layouts. Each output column is computed whole on one rank from the same input:
  W8A8 exactly as on one device, float paths up to the BLAS's blocking of a narrower N.
Row-wise (K split): input Shard(-1) -> partial sums -> all-reduce (sum) to Replicate, or
  reduce-scatter to Shard(-1) through DTensor. The bias is added once, by rank 0 before the
  reduce. Float paths then differ from one device by the rounding of the sum of partials
  (as torch's RowwiseParallel on nn.Linear does).
Row-wise W8A8 (int8, sparse24-int8): the per-token activation scale is the one of one
  device, max|x| over the full K / 127: the input hook all-reduces (max) each token's
  max|x_shard| and appends it as extra input columns (shard.AMAX_ALIGN), which meet zero weight
  columns, so the op's own quantization (any backend) computes the one-device scale and
  the one-device int8 codes; the int32 sums of the shards add up to the one-device sum
  exactly. Only the float epilogue differs: each shard scales its own int32 sum, and the
  shards' float results are summed (fp32 rounding of that sum; with fp16/bf16 activations
  the partials are rounded to x.dtype first, as torch's row-wise layers are). Per-shard
  scales would instead quantize each shard on its own grid: different int8 codes, errors
  of the order of the quantization step. Cost: one all-reduce of M floats and one concat
  of (M, K / ranks) per row-wise W8A8 layer call.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DeviceMesh, DTensor, Partial, Replicate, Shard
from torch.distributed.tensor import parallel as tp

from ..nn import KernelswapModule
from . import shard as S
from . import sharding_rules  # noqa: F401  (the styles' users get DTensor strategies for the ops too)

SPEC_ATTR = "tp_shard"  # a sharded module's ShardSpec (kernelswap.parallel.checkpoint reads it)
MESH_ATTR = "tp_mesh"


def _normalized(placements, ndim: int) -> tuple:
    return tuple(Shard(p.dim % ndim) if isinstance(p, Shard) else p for p in placements)


def _to_local_input(x, mesh: DeviceMesh, given: tuple, desired: tuple) -> torch.Tensor:
    """The local tensor of layout `desired`, from a DTensor or a plain tensor of layout `given`."""
    if not isinstance(x, DTensor):
        if _normalized(given, x.dim()) == _normalized(desired, x.dim()):
            return x
        x = DTensor.from_local(x, mesh, given, run_check=False)
    if _normalized(x.placements, x.dim()) != _normalized(desired, x.dim()):
        x = x.redistribute(placements=desired)
    return x.to_local()


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.get_device_module(mesh.device_type).current_device())


def _partition(style, module: KernelswapModule, mesh: DeviceMesh, kind: str) -> S.ShardSpec:
    """Shard `module` in place: its buffers become this rank's shard (see shard.py)."""
    if mesh.ndim != 1:
        raise ValueError(f"ks.parallel.{type(style).__name__}: {module.where}: takes a 1-D DeviceMesh (the "
                         f"tensor-parallel dimension, e.g. mesh['tp']), got a {mesh.ndim}-D mesh")
    if getattr(module, "_distribute_module_applied", False):
        raise RuntimeError(f"ks.parallel.{type(style).__name__}: {module.where} is already sharded")
    spec = S.plan(module, kind, mesh.get_local_rank(), mesh.size(), f"ks.parallel.{type(style).__name__}")
    device = _mesh_device(mesh)
    full = {k: (None if b is None else b.to(device)) for k, b in module._buffers.items()}
    # Like torch's styles, take src_data_rank's values (parallelize_module's src_data_rank; None: keep
    # each rank's own). torch scatters the shards; a broadcast of the packed layer is simpler.
    if style.src_data_rank is not None and mesh.size() > 1:
        for t in full.values():
            if t is not None:
                dist.broadcast(t, group=mesh.get_group(), group_src=style.src_data_rank)
    for name, t in S.shard_buffers(module, full, spec).items():
        module._buffers[name] = t
    module.in_features, module.out_features = S.local_features(module, spec)
    setattr(module, SPEC_ATTR, spec)
    setattr(module, MESH_ATTR, mesh)
    module.prepare()  # the shards' kernel layouts now, not in a (possibly captured) forward
    return spec


def _distribute(module: nn.Module, mesh: DeviceMesh, input_fn, output_fn) -> nn.Module:
    """torch's distribute_module without its replication of the (here local) buffers."""
    module.register_forward_pre_hook(lambda mod, inputs: input_fn(mod, inputs, mesh))
    module.register_forward_hook(lambda mod, inputs, outputs: output_fn(mod, outputs, mesh))
    module._distribute_module_applied = True
    return module


class ColwiseParallel(tp.ColwiseParallel):
    """torch's ColwiseParallel for kernelswap's linear layers too (module docstring)."""

    @staticmethod
    def _prepare_local_input_fn(input_layouts, desired_input_layouts, mod, inputs, device_mesh):
        return (_to_local_input(inputs[0], device_mesh, input_layouts, desired_input_layouts), *inputs[1:])

    @staticmethod
    def _prepare_local_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh):
        want = _normalized(output_layouts, outputs.dim())
        local_layout = (Shard(outputs.dim() - 1),)
        if use_local_output and want == local_layout:
            return outputs
        shape = torch.Size((*outputs.shape[:-1], getattr(mod, SPEC_ATTR).out_features))
        out = DTensor.from_local(outputs, device_mesh, local_layout, run_check=False, shape=shape,
                                 stride=torch.empty(shape, device="meta").stride())
        if want != local_layout:
            out = out.redistribute(placements=output_layouts)
        return out.to_local() if use_local_output else out

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, KernelswapModule):
            return super()._apply(module, device_mesh)
        _partition(self, module, device_mesh, "colwise")
        return _distribute(module, device_mesh,
                           partial(self._prepare_local_input_fn, self.input_layouts, self.desired_input_layouts),
                           partial(self._prepare_local_output_fn, self.output_layouts, self.use_local_output))


class RowwiseParallel(tp.RowwiseParallel):
    """torch's RowwiseParallel for kernelswap's linear layers too (module docstring)."""

    @staticmethod
    def _prepare_local_input_fn(input_layouts, desired_input_layouts, mod, inputs, device_mesh):
        x = _to_local_input(inputs[0], device_mesh, input_layouts, desired_input_layouts)
        spec = getattr(mod, SPEC_ATTR)
        if x.dim() < 1 or x.shape[-1] != spec.local_in:
            raise ValueError(f"ks.parallel.RowwiseParallel: {mod.where} holds input features "
                             f"[{spec.start}, {spec.stop}) of {spec.in_features} on rank {spec.rank}; expected "
                             f"the local shard of a Shard(-1) input, (..., {spec.local_in}), got {tuple(x.shape)}")
        if spec.amax_columns:
            x = _append_global_amax(x, mod.in_features - spec.local_in, device_mesh)
        return (x, *inputs[1:])

    @staticmethod
    def _prepare_local_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh):
        if use_local_output and tuple(output_layouts) == (Replicate(),):
            dist.all_reduce(outputs, group=device_mesh.get_group())  # what redistribute to Replicate does
            return outputs
        out = DTensor.from_local(outputs, device_mesh, (Partial(),), run_check=False)
        out = out.redistribute(placements=output_layouts)
        return out.to_local() if use_local_output else out

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, KernelswapModule):
            return super()._apply(module, device_mesh)
        self.desired_input_layouts = (Shard(-1),)
        _partition(self, module, device_mesh, "rowwise")
        return _distribute(module, device_mesh,
                           partial(self._prepare_local_input_fn, self.input_layouts, self.desired_input_layouts),
                           partial(self._prepare_local_output_fn, self.output_layouts, self.use_local_output))


def _append_global_amax(x: torch.Tensor, columns: int, mesh: DeviceMesh) -> torch.Tensor:
    """x (..., k) -> (..., k + columns): the extra columns hold each token's max|x| over every rank's
    shard (module docstring). max is exact in any float dtype, so the scale is the one-device one."""
    amax = x.abs().amax(dim=-1, keepdim=True) if x.shape[-1] else x.new_zeros((*x.shape[:-1], 1))
    dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=mesh.get_group())
    return torch.cat((x, amax.expand(*x.shape[:-1], columns)), dim=-1)


__all__ = ["ColwiseParallel", "RowwiseParallel"]
