"""DTensor sharding strategies for the kernelswap linear ops (register_sharding).

With these, a kernelswap op called on DTensors (e.g. a module whose buffers a user made
DTensors, or a DTensor activation) runs on the local shards and DTensor propagates the
layout, instead of failing for want of a strategy. Each entry is
(output placements, input placements), one input placement per op argument (None for
non-tensor arguments and for an absent bias):

  replicate     everything Replicate -> Replicate.
  tokens        x sharded on a leading (token) dim d, weights Replicate -> output Shard(d).
  column-wise   x Replicate, every weight buffer (and bias) Shard(0) -> output Shard(-1):
                each output column is computed on one rank, exactly as on one device.
  row-wise      int8_weight_linear only, without bias: x Shard(-1), w_q Shard(1), w_scale
                Replicate -> Partial (sum). The W8A8 ops quantize each token over the whole K
                (not linear in the K shards), int4 / 2:4 packed buffers cannot follow x's
                torch.chunk split of K in general, and a bias would be added once per rank:
                those row-wise layouts are left to ks.parallel.RowwiseParallel, which re-lays
                the shards (kernelswap.parallel.shard).
DTensor redistributes inputs that arrive in any other layout to the cheapest of these.
"""
from __future__ import annotations

import torch
from torch.distributed.tensor import Partial, Replicate, Shard
from torch.distributed.tensor.experimental import register_sharding

from .. import ops  # noqa: F401  (defines torch.ops.kernelswap.*)

_K = torch.ops.kernelswap


def _strategies(x, weights: tuple, tail: tuple = ()) -> list:
    """Replicate, token-sharded and column-wise strategies for an op (x, *weights, *tail)."""
    def present(t, p):
        return None if t is None else p

    out = [([Replicate()], [Replicate(), *(present(w, Replicate()) for w in weights), *tail])]
    for d in range(x.ndim - 1):
        out.append(([Shard(d)], [Shard(d), *(present(w, Replicate()) for w in weights), *tail]))
    out.append(([Shard(x.ndim - 1)], [Replicate(), *(present(w, Shard(0)) for w in weights), *tail]))
    return out


@register_sharding(_K.int8_linear.default)
def _int8_linear(x, w_q, w_scale, bias):
    return _strategies(x, (w_q, w_scale, bias))


@register_sharding(_K.int8_weight_linear.default)
def _int8_weight_linear(x, w_q, w_scale, bias):
    out = _strategies(x, (w_q, w_scale, bias))
    if bias is None:
        out.append(([Partial()], [Shard(x.ndim - 1), Shard(1), Replicate(), None]))
    return out


@register_sharding(_K.int4_linear.default)
def _int4_linear(x, w_packed, scales, zeros, group_size, bias):
    # group_size (an int) sits between the tensors: strategies list placements by argument position
    return [(o, [*i[:4], None, i[4]]) for o, i in _strategies(x, (w_packed, scales, zeros, bias))]


@register_sharding(_K.sparse24_linear.default)
def _sparse24_linear(x, values, meta, bias):
    return _strategies(x, (values, meta, bias))


@register_sharding(_K.sparse24_int8_linear.default)
def _sparse24_int8_linear(x, values, meta, w_scale, bias):
    return _strategies(x, (values, meta, w_scale, bias))


__all__: list[str] = []
