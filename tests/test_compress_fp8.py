"""GPTQ on the e4m3 grid (compress.gptq.gptq_fp8, ks.Fp8(method="gptq")), on CPU.

With an identity Hessian the sweep has nothing to spread and gives packing.quantize_fp8's RTN
exactly; on correlated inputs with outlier channels it beats RTN on held-out rows; through
ks.swap it beats RTN on a small model's outputs, keeps the packed format Fp8Linear reads, and
its method survives config and save / load.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap import packing
from kernelswap.compress.gptq import gptq_fp8
from kernelswap.recipes import recipe_from_config

from compress_toys import Toy, reference_one_thread as _reference, toy_data as _toy_data  # noqa: F401
from test_compress import _err, _inputs, _model_err


def _dequantized(w_q: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    return w_q.float() * w_scale[:, None]


@pytest.mark.parametrize("act_order", [False, True])
def test_identity_hessian_is_rtn(act_order):
    w = torch.randn(24, 160, generator=torch.Generator().manual_seed(5))
    w[3] = 0.0  # an all-zero row keeps scale 0 and codes 0
    q, s = gptq_fp8(w, torch.eye(160), act_order=act_order)
    rtn_q, rtn_s = packing.quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert torch.equal(q.view(torch.uint8), rtn_q.view(torch.uint8)) and torch.equal(s, rtn_s)


@pytest.mark.parametrize("act_order, margin", [(False, 0.8), (True, 0.6)])  # measured 0.61x, 0.36x
def test_gptq_fp8_beats_rtn_on_held_out_rows(act_order, margin):
    k = 200
    w = torch.randn(72, k, generator=torch.Generator().manual_seed(2))
    cal, held = _inputs(1024, k, 3), _inputs(512, k, 4)
    q, s = gptq_fp8(w, cal.T @ cal, act_order=act_order)
    rtn = _dequantized(*packing.quantize_fp8(w))
    e_q, e_rtn = _err(w, _dequantized(q, s), held), _err(w, rtn, held)
    print(f"\nheld-out output error: gptq {e_q:.3e}, rtn {e_rtn:.3e}")
    assert e_q < margin * e_rtn, (e_q, e_rtn)
    assert torch.equal(s, packing.quantize_fp8(w)[1])  # the scales are RTN's; only the rounding moves


def test_swap_fp8_gptq_beats_rtn_on_the_model_and_keeps_its_method(tmp_path):
    base = Toy().eval()
    cal, held = _toy_data(8, 0), _toy_data(4, 1)
    rtn, cm = copy.deepcopy(base), copy.deepcopy(base)
    ks.swap(rtn, "fp8", probe=False)
    rep = ks.swap(cm, ks.Fp8(method="gptq"), probe=False, calibration=cal)
    assert len(rep.swapped) == 7 and all(type(m).__name__ == "Fp8Linear" for m in [cm.head, cm.layers[1].down])
    e_rtn, e_m = _model_err(base, rtn, held), _model_err(base, cm, held)
    print(f"\nmodel output error: gptq {e_m:.3e}, rtn {e_rtn:.3e}")
    assert e_m < 0.95 * e_rtn, (e_m, e_rtn)  # measured 0.87x: the activations' rounding stays
    assert cm.head.recipe_config() == {"recipe": "fp8", "method": "gptq"} and rtn.head.recipe_config() == {
        "recipe": "fp8"}
    assert recipe_from_config(ks.Fp8(method="gptq").config()) == ks.Fp8(method="gptq")
    fresh = copy.deepcopy(base)
    ks.save(cm, tmp_path / "m.safetensors")
    ks.load(fresh, tmp_path / "m.safetensors")
    assert fresh.head.method == "gptq" and torch.equal(fresh.head.w_q.view(torch.uint8), cm.head.w_q.view(torch.uint8))
    x = held[0]
    assert torch.equal(fresh(x)["logits"], cm(x)["logits"])


def test_fp8_method_errors():
    with pytest.raises(ValueError, match="method must be one of 'rtn', 'gptq'"):
        ks.Fp8(method="awq")
    with pytest.raises(ValueError, match="needs calibration data"):
        ks.swap(Toy().eval(), ks.Fp8(method="gptq"))
    lin = nn.Linear(16, 8)
    assert ks.Fp8().convert(lin, "x").method == "rtn"
