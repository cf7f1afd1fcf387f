"""ks.parallel's workflows, run on every rank by tests/test_parallel.py (gloo workers): refusals,
sharding before swapping, save / load of sharded models, and the README's HF Llama plan.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from test_parallel_numerics import KEEP_FLOAT, RECIPES, _block, _layer, _parallelize, _sharded_block, _swapped, _x
from utils import assert_exact

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
            assert set(got) == set(full), f"{recipe}: round trip keys {sorted(set(got) ^ set(full))}"
            assert all(torch.equal(v, full[k]) for k, v in got.items()), f"{recipe}: round trip"
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
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 1e-5, f"relative difference {rel:.3e}"
