"""kernelswap.compress: calibrated int4 (GPTQ, AWQ), 2:4 pruning (Wanda, SparseGPT), distillation.

Each method is checked against an independent reference where one exists (with an identity
Hessian GPTQ is RTN and SparseGPT is magnitude pruning; with flat activations Wanda is
magnitude pruning), and on correlated inputs with outlier channels it must beat RTN /
magnitude on held-out rows by a margin, so replacing a method by its baseline fails here.
Small layers and a two-block toy model: fast on CPU.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap import packing
from kernelswap.compress import calibration as C
from kernelswap.compress.awq import awq_int4, awq_model, find_producers, search_clip
from kernelswap.compress.gptq import float_target, gptq_int4
from kernelswap.compress.sparsegpt import sparsegpt_24
from kernelswap.compress.wanda import keep_24, wanda_24
from kernelswap.recipes import recipe_from_config

from compress_toys import Toy, reference_one_thread as _reference, tiny_llama as _tiny_llama  # noqa: F401
from compress_toys import toy_data as _toy_data


def _inputs(rows: int, k: int, seed: int) -> torch.Tensor:
    """Correlated rows with a few outlier channels, like a transformer's Linear inputs."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(1)) / k ** 0.5
    scale = torch.ones(k)
    scale[::13] = 10.0
    return (torch.randn(rows, k, generator=g) @ mix + 0.2 * torch.randn(rows, k, generator=g)) * scale


def _err(w, q, x):
    return float(((x @ (w - q).T).norm() / (x @ w.T).norm()) ** 2)


@pytest.fixture(scope="module")
def layer():
    k = 200  # not a multiple of the group size or of 8: exercises the padding
    w = torch.randn(72, k, generator=torch.Generator().manual_seed(2))
    cal, held = _inputs(1024, k, 3), _inputs(512, k, 4)
    return w, cal, held


# ---------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 128])
def test_gptq_identity_hessian_is_rtn(symmetric, group_size, act_order):
    w = torch.randn(24, 160, generator=torch.Generator().manual_seed(5))
    q = gptq_int4(w, torch.eye(160), group_size, symmetric, act_order=act_order, search_grid=False)
    rtn = packing.quantize_int4(w, group_size, symmetric)
    assert torch.equal(q.packed, rtn.packed) and torch.equal(q.scales, rtn.scales)
    assert (q.zeros is None) == symmetric and (symmetric or torch.equal(q.zeros, rtn.zeros))


@pytest.mark.parametrize("act_order, margin", [(False, 0.75), (True, 0.5)])  # measured ~0.6x and ~0.3x
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_gptq_beats_rtn_on_held_out_rows(layer, symmetric, group_size, act_order, margin):
    w, cal, held = layer
    q = gptq_int4(w, cal.T @ cal, group_size, symmetric, act_order=act_order)
    rtn = packing.quantize_int4(w, group_size, symmetric)
    for a, b in zip(q, rtn):  # exactly packing's format: shapes, dtypes, group size, K
        assert (a is None and b is None) or (torch.is_tensor(a) and a.shape == b.shape and a.dtype == b.dtype) \
            or a == b
    e_q, e_rtn = _err(w, packing.dequantize_int4(q), held), _err(w, packing.dequantize_int4(rtn), held)
    assert e_q < margin * e_rtn, (e_q, e_rtn)
    lin = nn.Linear(200, 72, bias=False)
    lin.weight.data = w.clone()
    m = ks.Int4(group_size=group_size, symmetric=symmetric).convert(lin, "x", q)  # Int4Linear serves it
    torch.testing.assert_close(m(held[:8]), held[:8] @ packing.dequantize_int4(q).T, rtol=1e-4, atol=1e-3)


def _drifted(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x as a compressed model's earlier layers would hand it on: a fixed linear drift plus noise."""
    k = x.shape[1]
    drift = torch.randn(k, k, generator=torch.Generator().manual_seed(7)) / k ** 0.5
    return x + 0.3 * x @ drift + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_float_target_fits_the_float_outputs(layer, symmetric):
    """shift = X^T (X_float - X): float_target is the least-squares weight for X_float W^T read from X
    (torch.linalg.lstsq), and GPTQ with it beats plain GPTQ at matching the float outputs on held-out rows."""
    w, cal_f, held_f = layer
    cal, held = _drifted(cal_f, 1), _drifted(held_f, 2)
    h, shift = cal.T @ cal, cal.T @ (cal_f - cal)
    want = torch.linalg.lstsq(cal.double(), (cal_f @ w.T).double()).solution.T.float()
    torch.testing.assert_close(float_target(w, h, shift, damp=0.0), want, rtol=1e-3, atol=1e-3)
    ref = held_f @ w.T

    def err(q):
        return float((held @ packing.dequantize_int4(q).T - ref).norm() ** 2 / ref.norm() ** 2)

    e_plain, e_float = err(gptq_int4(w, h, 64, symmetric)), err(gptq_int4(w, h, 64, symmetric, shift=shift))
    print(f"\nGPTQ error to the float outputs: plain {e_plain:.4f}, float target {e_float:.4f}")
    assert e_float < 0.5 * e_plain, (e_float, e_plain)


# ---------------------------------------------------------------- AWQ
def test_awq_clip_search_beats_rtn(layer):
    w, cal, held = layer
    h = cal.T @ cal
    ratio = search_clip(w, h, 64, False)
    assert ratio.shape == (72, 4) and bool((ratio <= 1).all()) and bool((ratio < 1).any())
    q = packing.dequantize_int4(awq_int4(w, h, 64, False))
    rtn = packing.dequantize_int4(packing.quantize_int4(w, 64, False))
    assert _err(w, q, held) < 0.95 * _err(w, rtn, held)


# ---------------------------------------------------------------- Wanda / SparseGPT
def test_sparsegpt_identity_hessian_and_wanda_flat_inputs_are_magnitude(layer):
    w = layer[0]
    mag = packing.prune_24(w)
    torch.testing.assert_close(sparsegpt_24(w, torch.eye(w.shape[1])), mag, rtol=0, atol=1e-6)
    assert torch.equal(wanda_24(w, torch.full((w.shape[1],), 3.0)), mag)


def test_keep_24_ragged_tail():
    mask = keep_24(torch.tensor([[1.0, 4.0, 3.0, 2.0, 5.0, 0.5]]))
    assert mask.tolist() == [[False, True, True, False, True, True]]


def test_wanda_and_sparsegpt_beat_magnitude_on_held_out_rows(layer):
    w, cal, held = layer
    mag = packing.prune_24(w)
    wan = wanda_24(w, cal.square().sum(0))
    sgpt = sparsegpt_24(w, cal.T @ cal)
    assert packing.is_24_sparse(wan) and packing.is_24_sparse(sgpt)
    assert not torch.equal(wan != 0, mag != 0)  # a different mask, not magnitude's
    e_mag, e_wan, e_sgpt = _err(w, mag, held), _err(w, wan, held), _err(w, sgpt, held)
    assert e_wan < 0.7 * e_mag and e_sgpt < 0.9 * e_wan, (e_mag, e_wan, e_sgpt)


def _model_err(a, b, data):
    with torch.no_grad():
        ref = torch.cat([a(x)["logits"] for x in data])
        out = torch.cat([b(x)["logits"] for x in data])
    return float((out - ref).norm() / ref.norm())


def test_calibration_accepts_tensor_tuple_and_dict_batches():
    model = Toy().eval()
    data = _toy_data(2, 0)
    layers = {"layers.0.up": model.layers[0].up}
    forms = [data, [(x,) for x in data], [(x, 1.0) for x in data], [{"x": x} for x in data]]
    stats = [C.collect(model, layers, f, ("hessian", "sqnorm"), show=False)["layers.0.up"] for f in forms]
    for s in stats[1:]:
        assert s.rows == stats[0].rows == 64
        torch.testing.assert_close(s.hessian, stats[0].hessian)
    with pytest.raises(ValueError, match="calibration data is empty"):
        C.batches([], "x")
    with pytest.raises(TypeError, match="wrap a single batch in a list"):
        C.batches(data[0], "x")


def test_awq_folds_only_where_exact():
    for post_norm, want in ((False, {"layers.#.norm->layers.#.gate,layers.#.up", "layers.#.up->layers.#.down"}),
                            (True, {"layers.#.up->layers.#.down"})):
        model = Toy(post_norm=post_norm).eval()
        ref = copy.deepcopy(model)
        data = _toy_data(2, 0)
        consumers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"}
        stats = C.collect(model, consumers, data, ("hessian", "absmean"), show=False)
        pairs = find_producers(model, consumers, data[0])
        folded = awq_model(model, consumers, stats, data[0], 64, False)
        got = {f"{p}->{','.join(m)}".replace(".0.", ".#.").replace(".1.", ".#.")
               for p, m in pairs if all(n in folded for n in m)}
        assert got == want, (post_norm, got)
        assert _model_err(ref, model, data) < 1e-5  # the float model is unchanged by the folds


@pytest.mark.parametrize("method, margin", [("gptq", 0.85), ("awq", 0.95)])  # measured 0.75x, 0.89x
def test_swap_calibrated_int4_beats_rtn_on_the_model(method, margin):
    base = Toy().eval()
    cal, held = _toy_data(8, 0), _toy_data(4, 1)
    rtn, cm = copy.deepcopy(base), copy.deepcopy(base)
    ks.swap(rtn, ks.Int4(group_size=32), probe=False)
    rep = ks.swap(cm, ks.Int4(group_size=32, method=method), probe=False, calibration=cal)
    assert len(rep.swapped) == 7 and all(type(m).__name__ == "Int4Linear" for m in [cm.head, cm.layers[1].down])
    e_rtn, e_m = _model_err(base, rtn, held), _model_err(base, cm, held)
    assert e_m < margin * e_rtn, (e_m, e_rtn)


def test_calibrated_recipe_without_data_and_bad_method():
    for recipe in (ks.Int4(method="gptq"), ks.Sparse24(method="wanda"), ks.Sparse24Int8(method="sparsegpt")):
        with pytest.raises(ValueError, match="needs calibration data"):
            ks.swap(Toy().eval(), recipe)
    with pytest.raises(ValueError, match="method must be one of 'rtn', 'awq', 'gptq'"):
        ks.Int4(method="gptqq")
    with pytest.raises(ValueError, match="method must be one of 'magnitude', 'wanda', 'sparsegpt'"):
        ks.Sparse24(method="awq")
    with pytest.raises(ValueError, match="needs calibration data"):
        ks.prune(Toy(), "wanda")
    ks.swap(Toy().eval(), "int4", calibration=_toy_data(1, 0), probe=False)  # ignored by RTN


def test_method_survives_config_and_save_load(tmp_path):
    for recipe in (ks.Int4(group_size=64, symmetric=True, method="gptq"), ks.Sparse24Int8(method="wanda")):
        assert recipe_from_config(recipe.config()) == recipe
    model = Toy().eval()
    fresh = copy.deepcopy(model)
    ks.swap(model, ks.Int4(group_size=64, method="gptq"), probe=False, calibration=_toy_data(4, 0))
    assert model.head.recipe_config() == {"recipe": "int4", "group_size": 64, "symmetric": False, "method": "gptq"}
    ks.save(model, tmp_path / "m.safetensors")
    ks.load(fresh, tmp_path / "m.safetensors")
    assert fresh.head.method == "gptq" and torch.equal(fresh.head.w_packed, model.head.w_packed)
    x = _toy_data(1, 3)[0]
    assert torch.equal(fresh(x)["logits"], model(x)["logits"])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_then_swap_keeps_the_mask(method):
    base = Toy().eval()
    cal, held = _toy_data(8, 0), _toy_data(4, 1)
    mag, pruned = copy.deepcopy(base), copy.deepcopy(base)
    ks.prune(mag, "magnitude")
    rep = ks.prune(pruned, method, calibration=cal)
    assert len(rep) == 7 and all(abs(x.nonzero - 0.5) < 0.01 and x.output_error > 0 for x in rep.layers)
    assert all(packing.is_24_sparse(m.weight) for m in pruned.modules() if isinstance(m, nn.Linear))
    assert not torch.equal(pruned.layers[0].up.weight != 0, mag.layers[0].up.weight != 0)
    assert _model_err(base, pruned, held) < 0.95 * _model_err(base, mag, held)  # measured 0.88x (wanda)
    swapped = copy.deepcopy(pruned)
    ks.swap(swapped, "sparse24", probe=False)
    for (n, m), s in zip(((n, m) for n, m in pruned.named_modules() if isinstance(m, nn.Linear)),
                         (s for s in swapped.modules() if isinstance(s, ks.nn.Sparse24Linear))):
        assert torch.equal(packing.decompress_24(s.values, s.meta, s.in_features), m.weight.detach()), n
    assert _model_err(pruned, swapped, held) < 1e-5


def test_prune_24_keeps_an_existing_mask_even_with_sparser_groups():
    w = packing.prune_24(torch.randn(16, 44))
    w[0, :4] = torch.tensor([0.0, 0.0, 0.0, -3.0])  # one non-zero
    w[1, 4:8] = 0.0  # none
    w[2, 8:12] = torch.tensor([0.001, 0.0, 0.0, 0.002])  # small kept values
    assert torch.equal(packing.prune_24(w), w)


def test_swap_sparse24_calibrated_recipe_and_int8():
    base = Toy().eval()
    cal = _toy_data(6, 0)
    for recipe in (ks.Sparse24(method="sparsegpt"), ks.Sparse24Int8(method="wanda")):
        m = copy.deepcopy(base)
        ks.swap(m, recipe, probe=False, calibration=cal)
        assert m.head.method == recipe.method and m.head.int8 == isinstance(recipe, ks.Sparse24Int8)
        assert m.head.recipe_config() == recipe.config()
    ref = copy.deepcopy(base)
    ks.prune(ref, "sparsegpt", calibration=cal)
    m = copy.deepcopy(base)
    old = m.layers[0].up
    ks.swap(m, ks.Sparse24(method="sparsegpt"), probe=False, calibration=cal)
    assert _model_err(ref, m, _toy_data(2, 5)) < 1e-5  # swap packs the same weights ks.prune makes
    assert torch.equal(old.weight, base.layers[0].up.weight)  # calibration restored the float weights


def test_distill_holds_masks_lowers_loss_and_is_reproducible():
    teacher = Toy().eval()
    cal, held = _toy_data(6, 0), _toy_data(4, 1)
    runs = []
    for _ in range(2):
        student = copy.deepcopy(teacher)
        ks.prune(student, "wanda", calibration=cal)
        masks = {n: m.weight.detach() != 0 for n, m in student.named_modules() if isinstance(m, nn.Linear)}
        before = _model_err(teacher, student, held)
        rep = ks.distill(student, teacher, [(x,) for x in cal], steps=40, lr=3e-3, temperature=2.0, seed=1,
                         progress_bar=False)
        runs.append(student)
        assert len(rep.losses) == 40 and rep.target == "logits" and rep.masked_layers == 7
        assert sum(rep.losses[-5:]) < 0.5 * sum(rep.losses[:5])
        assert _model_err(teacher, student, held) < before
        for n, m in student.named_modules():
            if isinstance(m, nn.Linear):
                assert torch.equal(m.weight.detach() != 0, masks[n]), n
        assert not student.training
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)


def test_awq_folds_on_a_tiny_llama():
    """Llama (pre-norm, GQA): the norms take the q/k/v and gate/up scales, up_proj takes down_proj's;
    o_proj has no exact producer (its input comes through attention from a narrower v_proj)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ref = copy.deepcopy(model)
    data = [{"input_ids": torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(i))} for i in range(3)]
    consumers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    stats = C.collect(model, consumers, data[:2], ("hessian", "absmean"), show=False)
    folded = awq_model(model, consumers, stats, data[0], 32, True)
    assert sorted({n.split(".", 3)[3] for n in folded}) == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
                                                           "self_attn.k_proj", "self_attn.q_proj",
                                                           "self_attn.v_proj"]
    with torch.no_grad():
        torch.testing.assert_close(model(**data[2]).logits, ref(**data[2]).logits, rtol=1e-4, atol=1e-5)
