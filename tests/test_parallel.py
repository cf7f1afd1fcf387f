"""ks.parallel on CPU processes (gloo): swapped layers and a transformer block sharded with torch's
parallelize_module give the unsharded swapped model's outputs; refusals raise on every rank.

The worker processes start once per world size (2 and 4) and run every check; each
check's outcome comes back per rank, so a failure names the check and the rank. A worker
that hangs is killed after TIMEOUT_S and the test fails instead of stalling CI.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import socket
import sys
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from utils import assert_close_to_ref, assert_exact

TIMEOUT_S = 150
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


def check_refusals(mesh, world):
    """Splits that would cut a group, or leave a rank empty: a ValueError naming the layer, every rank."""
    import kernelswap as ks
    from torch.distributed.tensor.parallel import parallelize_module
    cases = [(ks.Int4(group_size=128), 8, 128, ks.parallel.RowwiseParallel, "cuts the int4 groups of 128"),
             ("sparse24", 8, 10, ks.parallel.RowwiseParallel, "cuts the 2:4 groups of four"),
             ("int8", world - 1, 16, ks.parallel.ColwiseParallel, f"rank {world - 1} would get none")]
    for recipe, n, k, style, words in cases:
        m = _layer(recipe, n, k)
        before = {k_: v.clone() for k_, v in m.state_dict().items()}
        with pytest.raises(ValueError, match=words) as e:
            parallelize_module(m, mesh, {"0": style()})
        assert "'0'" in str(e.value), f"the error does not name the layer: {e.value}"
        assert all(torch.equal(before[k_], v) for k_, v in m.state_dict().items()), "refused, but changed"
    with pytest.raises(NotImplementedError, match="not a kernelswap linear layer"):
        conv = ks.nn.ConvBNAct2d.from_modules(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8).eval(), None)
        parallelize_module(nn.Sequential(conv), mesh, {"0": ks.parallel.ColwiseParallel()})
    torch.distributed.barrier()  # every rank got here: nobody waits on a collective the others skipped


def check_shard_then_swap(mesh, world):
    """Sharding first (torch's styles on nn.Linear), then ks.swap: the layer is left, with the reason."""
    import kernelswap as ks
    from torch.distributed.tensor import parallel as tp
    m = tp.parallelize_module(_block(0), mesh, {"q": tp.ColwiseParallel()})
    report = ks.swap(m, "int8", probe=False)
    q = next(layer for layer in report.layers if layer.name == "q")
    assert not q.swapped and "swap the full model first" in q.reason, q.reason
    assert isinstance(m.k, ks.nn.Int8Linear)  # the unsharded layers are swapped as usual


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


def check_checkpoint(mesh, world, tmp):
    """save from a sharded model -> ks.load on one device, and a full file into a sharded model."""
    import kernelswap as ks
    x = _x((2, 5, 128))
    path = os.path.join(tmp, f"block{world}.safetensors")
    with torch.no_grad():
        ref = _swapped("int4")
        ks.parallel.save(_parallelize(_swapped("int4"), mesh), path)
        whole = ks.load(_block(5), path)  # another seed's float weights: all come from the file
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in whole.state_dict().items()), "gathered != full"
        assert_exact(whole(x), ref(x), "ks.load of the gathered file")
        sharded = _parallelize(_swapped("int4", seed=7), mesh)
        ks.parallel.load(sharded, path)
        expect = _parallelize(_swapped("int4"), mesh)(x)
        assert_exact(sharded(x), expect, "ks.parallel.load of a full file")
        for recipe in RECIPES:  # every format (and int8's torch-sharded DTensor layers) through gather and reshard
            full = _swapped(recipe, keep_float=KEEP_FLOAT.get(recipe, ())).state_dict()
            p = os.path.join(tmp, f"{recipe}{world}.safetensors")
            ks.parallel.save(_sharded_block(recipe, mesh), p)
            got = ks.parallel.full_state_dict(ks.parallel.load(_sharded_block(recipe, mesh, seed=9), p))
            assert set(got) == set(full) and all(torch.equal(v, full[k]) for k, v in got.items()), f"{recipe}: round trip"
        for recipe in ("int4", "int8"):  # per-rank files
            p = os.path.join(tmp, f"{recipe}{world}-ranks.safetensors")
            ks.parallel.save(_sharded_block(recipe, mesh), p, full=False)
            again = ks.parallel.load(_sharded_block(recipe, mesh, seed=8), p, full=False)
            assert_exact(again(x), _sharded_block(recipe, mesh)(x), f"{recipe}: per-rank save / load")


def check_hf_llama(mesh, world):
    """The README's plan on a tiny HF LlamaForCausalLM: prefill and one StaticCache decode step agree."""
    import kernelswap as ks
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_attention_heads=8, num_key_value_heads=4,
                         head_dim=16, vocab_size=256, num_hidden_layers=2, max_position_embeddings=64)
    config._attn_implementation = "sdpa"

    def build(shard):
        torch.manual_seed(0)
        m = LlamaForCausalLM(config).eval()
        ks.swap(m, ks.Int4(group_size=32), filter=lambda name, _m: name.startswith("model.layers."), probe=False)
        if shard:
            plan = {"lm_head": ColwiseParallel(output_layouts=Replicate())}
            for i in range(config.num_hidden_layers):
                p = f"model.layers.{i}."
                plan |= {p + n: ks.parallel.ColwiseParallel() for n in
                         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")}
                plan |= {p + n: ks.parallel.RowwiseParallel() for n in ("self_attn.o_proj", "mlp.down_proj")}
            parallelize_module(m, mesh, plan)
        return m

    def decode(m):
        cache = StaticCache(config=config, max_cache_len=32)
        ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
        first = m(input_ids=ids, cache=cache, use_cache=True, cache_position=torch.arange(9)).logits
        pos = torch.full((1,), 9)
        step = m(input_ids=first[:, -1:].argmax(-1), position_ids=pos.expand(2, 1), cache_position=pos, cache=cache,
                 use_cache=True).logits
        return torch.cat((first, step), 1)

    with torch.inference_mode():
        ref, out = decode(build(False)), decode(build(True))
    # int4 (W4A16) is a float path: the row-wise sums are the only difference, so fp32 rounding level
    assert float((out - ref).norm() / ref.norm()) < 1e-5, f"relative difference {float((out - ref).norm() / ref.norm())}"


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    results = {}
    try:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        # a collective that one rank never joins raises after this, instead of waiting out TIMEOUT_S
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
        mesh = init_device_mesh("cpu", (world,))
        checks = [(f"block-{r}", lambda r=r: check_block(r, mesh, world)) for r in RECIPES]
        checks += [(f"layers-{r}", lambda r=r: check_layers(r, mesh, world)) for r in RECIPES]
        checks += [("refusals", lambda: check_refusals(mesh, world)),
                   ("shard-then-swap", lambda: check_shard_then_swap(mesh, world)),
                   ("dtensor-ops", lambda: check_dtensor_ops(mesh, world)),
                   ("checkpoint", lambda: check_checkpoint(mesh, world, out_dir)),
                   ("hf-llama", lambda: check_hf_llama(mesh, world))]
        for name, fn in checks:
            try:
                fn()
                results[name] = None
            except Exception:  # noqa: BLE001 - reported per check to the parent
                results[name] = traceback.format_exc()
            _write(out_dir, rank, results)  # what got done is there even if a later check hangs
            dist.barrier()  # a rank that failed early does not leave the others in a collective
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        results["setup"] = traceback.format_exc()
    _write(out_dir, rank, results)


def _write(out_dir, rank, results):
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def _read(out_dir, world):
    paths = {r: os.path.join(out_dir, f"rank{r}.json") for r in range(world)}
    return {r: json.load(open(p)) if os.path.exists(p) else {} for r, p in paths.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_method() -> str:
    """fork where it is safe: the workers then inherit the parent's imports (torch.distributed.tensor
    alone takes seconds a process on a busy core; spawn tripled this file's time). They use CPU
    tensors and gloo only, so a parent without CUDA state is all fork needs."""
    return "fork" if sys.platform == "linux" and not torch.cuda.is_initialized() else "spawn"


def _spawn(world: int, out_dir: str) -> dict[int, dict]:
    import kernelswap.parallel.style  # noqa: F401 - imported once here, inherited by forked workers
    try:
        import transformers.models.llama  # noqa: F401
    except ImportError:  # test_parallel skips the hf-llama check then
        pass
    ctx = mp.start_processes(_worker, args=(world, _free_port(), out_dir), nprocs=world, join=False,
                             start_method=_start_method())
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            done = {r: {k: "failed" if v else "ok" for k, v in res.items()} for r, res in _read(out_dir, world).items()}
            pytest.fail(f"{world} gloo workers still running after {TIMEOUT_S} s: a hang; checks done: {done}")
    return _read(out_dir, world)


CHECKS = [f"block-{r}" for r in RECIPES] + [f"layers-{r}" for r in RECIPES] + \
    ["refusals", "shard-then-swap", "dtensor-ops", "checkpoint", "hf-llama"]
_RUNS: dict[int, dict] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    def get(world):
        if world not in _RUNS:
            _RUNS[world] = _spawn(world, str(tmp_path_factory.mktemp(f"tp{world}")))
        return _RUNS[world]
    return get


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("world", [2, 4])
def test_parallel(runs, world, check):
    if check == "hf-llama":
        pytest.importorskip("transformers")
    results = runs(world)
    for rank, res in results.items():
        assert "setup" not in res, f"rank {rank}: {res['setup']}"
        assert res.get(check) is None, f"{check} on rank {rank} of {world}:\n{res[check]}"
