"""Tensor parallelism for swapped models on torch.distributed (DTensor's engine).

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module
    import kernelswap as ks

    ks.swap(model, "int4")                                   # swap first, then shard
    mesh = init_device_mesh("cuda", (world_size,))
    parallelize_module(model, mesh, {"mlp.up_proj": ks.parallel.ColwiseParallel(),
                                     "mlp.down_proj": ks.parallel.RowwiseParallel()})

Swap first, then shard: ks.swap leaves a layer whose weight is already a DTensor (sharded by
torch's styles) unswapped, and its report says so.

ColwiseParallel / RowwiseParallel (style.py) take kernelswap's linear layers and hand
nn.Linear / nn.Embedding to torch's own styles; shard.py holds the per-format rules;
sharding_rules.py registers DTensor sharding strategies for the kernelswap ops;
checkpoint.py saves and loads sharded models (save / load).

The names load lazily: torch.distributed.tensor costs about a second to import, which
`import kernelswap` should not pay. The DTensor strategies are registered on first use of
any of these names (or `import kernelswap.parallel.sharding_rules`).
"""
import importlib

_WHERE = {"ColwiseParallel": "style", "RowwiseParallel": "style", "load": "checkpoint", "save": "checkpoint",
          "full_state_dict": "checkpoint", "rank_path": "checkpoint"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'kernelswap.parallel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
