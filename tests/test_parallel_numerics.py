"""ks.parallel's numerics, run on every rank by tests/test_parallel.py (gloo workers): the models,
the references and the checks that sharded outputs match the unsharded swapped model's.

Float paths: DESIGN.md's baseline-relative tolerance (tests/utils.py); W8A8: exact column-wise, and
row-wise within the fp32 rounding of the summed shards (the one-device int8 codes and scale).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils import assert_close_to_ref, assert_exact

RECIPES = ("int8", "int8-weight", "int4", "sparse24", "sparse24-int8")
W8A8 = ("int8", "sparse24-int8")
U32 = 2.0 ** -24  # fp32 unit roundoff


# ---------------------------------------------------------------- models and references
class Block(nn.Module):
    """A pre-norm transformer block: q/k/v and MLP up column-wise, o and MLP down row-wise."""

    def __init__(self, hidden=128, heads=4, inter=256):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q, self.k, self.v = (nn.Linear(hidden, hidden, bias=b) for b in (True, False, True))
        self.o = nn.Linear(hidden, hidden, bias=True)
        self.up, self.gate = nn.Linear(hidden, inter, bias=False), nn.Linear(hidden, inter, bias=True)
        self.down = nn.Linear(inter, hidden, bias=True)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.norm1(x)
        # local heads: a column-wise q/k/v shard holds whole heads, so -1 counts them
        q, k, v = (p(h).reshape(b, t, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim), dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


PLAN_COL = ("q", "k", "v", "up", "gate")
PLAN_ROW = ("o", "down")
# int8 leaves two layers float: "up" sharded by torch's own style, "o" by ks.parallel's (handed to torch's)
KEEP_FLOAT = {"int8": ("up", "o")}


def _block(seed: int, dtype=torch.float32) -> Block:
    torch.manual_seed(seed)
    return Block().to(dtype).eval()


def _recipe(name: str):
    import kernelswap as ks
    return ks.Int4(group_size=32) if name == "int4" else name


def _swapped(recipe: str, seed: int = 0, keep_float=()) -> Block:
    import kernelswap as ks
    m = _block(seed)
    ks.swap(m, _recipe(recipe), filter=lambda name, _m: name not in keep_float, probe=False)
    return m


def _dense_weight(m) -> torch.Tensor:
    """The float weight a swapped layer stands for, from kernelswap.packing (not the ops)."""
    from kernelswap import nn as knn, packing
    if isinstance(m, nn.Linear):
        return m.weight.detach().float()
    if isinstance(m, knn.Int8Linear):
        return packing.dequantize_int8(m.w_q, m.w_scale)
    if isinstance(m, knn.Int4Linear):
        return packing.dequantize_int4(packing.Int4Weight(m.w_packed, m.scales, m.zeros, m.group_size,
                                                          m.in_features))
    w = packing.decompress_24(m.values, m.meta, m.in_features).float()
    return w * m.w_scale[:, None] if m.int8 else w


def _densified(block: Block, dtype) -> Block:
    """The swapped block with every swapped layer back as an nn.Linear of its float weight."""
    import copy
    out = copy.deepcopy(block)
    for name in PLAN_COL + PLAN_ROW:
        m = getattr(block, name)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        lin.weight.data, lin.bias = _dense_weight(m), None if m.bias is None else nn.Parameter(m.bias.float())
        setattr(out, name, lin)
    return out.to(dtype)


# ---------------------------------------------------------------- the checks (run on every rank)
def _parallelize(model, mesh, plan_col=PLAN_COL, plan_row=PLAN_ROW, torch_col=()):
    import kernelswap as ks
    from torch.distributed.tensor import parallel as tp
    plan = {n: (tp.ColwiseParallel() if n in torch_col else ks.parallel.ColwiseParallel()) for n in plan_col}
    plan.update({n: ks.parallel.RowwiseParallel() for n in plan_row})
    return tp.parallelize_module(model, mesh, plan)


def _sharded_block(recipe, mesh, seed=0):
    keep = KEEP_FLOAT.get(recipe, ())
    return _parallelize(_swapped(recipe, seed, keep_float=keep), mesh, torch_col=keep[:1])


def _x(shape, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def check_block(recipe, mesh, world):
    """Sharded block == unsharded swapped block (float paths: DESIGN tolerance; W8A8: see below)."""
    x = _x((2, 5, 128))
    ref_model = _swapped(recipe, keep_float=KEEP_FLOAT.get(recipe, ()))
    with torch.no_grad():
        ref = ref_model(x)
        dense = _densified(ref_model, torch.float64)
        out = _sharded_block(recipe, mesh)(x)
        if recipe in W8A8:
            # Activation quantization is not linear: the row-wise all-reduce's fp32 rounding can move a
            # token of the next layer's input across a rounding boundary. Bound the difference by a
            # hundredth of the recipe's own quantization error against its densified float block.
            own = (ref - dense.float()(x)).norm()
            assert (out - ref).norm() <= own / 100, \
                f"sharded vs unsharded {float((out - ref).norm()):.3e}, quantization error {float(own):.3e}"
        else:
            assert_close_to_ref(out, dense(x.double()), _densified(ref_model, torch.float32)(x),
                                what=f"{recipe} block over {world} ranks")


def _layer(recipe, n, k, bias=True, seed=3):
    import kernelswap as ks
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(k, n, bias=bias)).eval()
    ks.swap(m, _recipe(recipe), probe=False)
    return m


def check_layers(recipe, mesh, world):
    """One swapped layer column-wise (N uneven over the ranks) and row-wise (ragged last K shard)."""
    import kernelswap as ks
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import parallelize_module
    n = 37  # torch.chunk: 19 + 18 over 2 ranks, 10 + 10 + 10 + 7 over 4
    k = {"int8": 37, "int8-weight": 37, "int4": 127}.get(recipe, 36 * world - 1)  # 2:4: shards of 36 = 9 groups
    x = _x((3, 7, k), seed=4)
    with torch.no_grad():
        ref = _layer(recipe, n, k)(x)
        col = parallelize_module(_layer(recipe, n, k), mesh,
                                 {"0": ks.parallel.ColwiseParallel(output_layouts=Replicate())})
        out = col(x)
        # every output column is computed whole on one rank, as on one device
        (assert_exact if recipe in W8A8 else _close_fp32)(out, ref, f"{recipe} column-wise")
        row = parallelize_module(_layer(recipe, n, k), mesh, {"0": ks.parallel.RowwiseParallel()})
        start, stop = row[0].tp_shard.start, row[0].tp_shard.stop
        out = row(x[..., start:stop])
        # the same through DTensors: a Shard(-1) DTensor input, a Replicate DTensor output
        as_dtensor = parallelize_module(_layer(recipe, n, k), mesh, {"0": ks.parallel.RowwiseParallel(
            use_local_output=False)})(distribute_tensor(x, mesh, [Shard(2)]))
        assert as_dtensor.placements == (Replicate(),), as_dtensor.placements
        assert_exact(as_dtensor.to_local(), out, f"{recipe} row-wise, DTensor in and out")
    if recipe in W8A8:  # the max|x| columns end K where the CUDA int8 GEMMs want it
        assert row[0].in_features % 32 == 0 and row[0].in_features > stop - start, row[0].in_features
        bound = _w8a8_row_bound(_layer(recipe, n, k)[0], x, world)
        assert bool(((out - ref).abs() <= bound).all()), f"{recipe} row-wise: beyond the fp32 rounding of the sum"
        per_shard = _per_shard_scales(_layer(recipe, n, k)[0], x, world)
        assert not bool(((per_shard - ref).abs() <= bound).all()), "the bound cannot tell per-shard scales apart"
    else:
        w = _dense_weight(_layer(recipe, n, k)[0]).double()
        b = _layer(recipe, n, k)[0].bias.double()
        assert_close_to_ref(out, x.double() @ w.t() + b, F.linear(x, w.float(), b.float()),
                            what=f"{recipe} row-wise over {world} ranks")


def _close_fp32(out, ref, what):
    """Float column-wise: the same fp32 dot products, up to the BLAS's blocking of a narrower N."""
    torch.testing.assert_close(out, ref, rtol=8 * U32, atol=8 * U32 * float(ref.abs().max()), msg=what)


def _quantize(x, amax):
    scale = amax / 127.0
    return torch.round(x / torch.where(scale == 0, 1.0, scale)[..., None]).clamp(-127, 127), scale


def _int_weight(m):
    from kernelswap import packing
    if hasattr(m, "w_q"):
        return m.w_q.double()
    return packing.decompress_24(m.values, m.meta, m.in_features).double()


def _w8a8_row_bound(m, x, world):
    """|sharded - unsharded| <= (world + 3) u sum_r |partial_r|: both use the one-device int8 codes and
    scale; they differ by the fp32 roundings of the epilogue and of the sum of the shards' results."""
    q, scale = _quantize(x.double(), x.double().abs().amax(-1))
    w, k = _int_weight(m), x.shape[-1]
    c = math.ceil(k / world)
    partial = sum((q[..., r * c:(r + 1) * c] @ w[:, r * c:(r + 1) * c].t()).abs() for r in range(world))
    return (world + 3) * U32 * (partial * scale[..., None] * m.w_scale.double() + m.bias.double().abs())


def _per_shard_scales(m, x, world):
    """What the row-wise layer would give with each shard quantized on its own scale."""
    w, k = _int_weight(m), x.shape[-1]
    c = math.ceil(k / world)
    out = m.bias.double().clone()
    for r in range(world):
        xs = x[..., r * c:(r + 1) * c].double()
        q, s = _quantize(xs, xs.abs().amax(-1))
        out = out + (q @ w[:, r * c:(r + 1) * c].t()) * s[..., None] * m.w_scale.double()
    return out.float()


def check_dtensor_ops(mesh, world):
    """The registered strategies: kernelswap ops on DTensors give the ops' own results."""
    from kernelswap import ops
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor
    layers = {r: _layer(r, 8 * world, 64)[0] for r in RECIPES}
    x = _x((5, 64), seed=6)
    calls = {
        "int8": (ops.int8_linear, lambda m: (m.w_q, m.w_scale, m.bias)),
        "int8-weight": (ops.int8_weight_linear, lambda m: (m.w_q, m.w_scale, m.bias)),
        "int4": (ops.int4_linear, lambda m: (m.w_packed, m.scales, m.zeros, m.group_size, m.bias)),
        "sparse24": (ops.sparse24_linear, lambda m: (m.values, m.meta, m.bias)),
        "sparse24-int8": (ops.sparse24_int8_linear, lambda m: (m.values, m.meta, m.w_scale, m.bias)),
    }
    def dt(t, p):
        return distribute_tensor(t, mesh, [p]) if isinstance(t, torch.Tensor) else t

    for recipe, (op, args) in calls.items():
        ref = op(x, *args(layers[recipe]))
        col = op(dt(x, Replicate()), *(dt(a, Shard(0)) for a in args(layers[recipe])))
        assert col.placements == (Shard(1),), f"{recipe}: column-wise output is {col.placements}"
        same = assert_exact if recipe in W8A8 else _close_fp32  # float: the BLAS may block a narrower N otherwise
        same(col.full_tensor(), ref, f"{recipe} DTensor column-wise")
        tok = op(dt(x, Shard(0)), *(dt(a, Replicate()) for a in args(layers[recipe])))
        assert tok.placements == (Shard(0),), f"{recipe}: token-sharded output is {tok.placements}"
        same(tok.full_tensor(), ref, f"{recipe} DTensor token-sharded")
    m = layers["int8-weight"]
    row = ops.int8_weight_linear(dt(x, Shard(1)), dt(m.w_q, Shard(1)), dt(m.w_scale, Replicate()), None)
    assert row.placements == (Partial(),), f"int8_weight_linear row-wise output is {row.placements}"
    _close_fp32(row.full_tensor(), ops.int8_weight_linear(x, m.w_q, m.w_scale, None), "DTensor row-wise")
