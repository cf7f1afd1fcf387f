"""Gradients through swapped layers, and the per-layout runners of their forward.

Gradients: every recipe's layer gives x the gradient of the layer whose weight is the
dequantized one (W8A8 straight through its activation quantization), checked against
torch autograd on that dense layer; a fused conv gives x and the residual the gradient of
its reference. Never a silent zero or None.

Runners (kernelswap.ops._runner, kernelswap.nn._base): a layer decides once per input
layout, and must notice when that decision would be stale: buffers replaced (a copy, a
load, functional_call), a forced backend, tracing.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.ops import backend
from kernelswap.ops.int4 import dequantize_int4_ref
from kernelswap.ops.sparse24 import decompress_24_ref
from utils import assert_close_to_ref

RECIPES = ["int8", "int8-weight", "int4", "sparse24", "sparse24-int8"]


def _dense_weight(layer) -> torch.Tensor:
    """The float (N, K) weight a swapped linear layer stands for, from its buffers."""
    k = layer.in_features
    if isinstance(layer, ks.nn.Int8Linear):
        return layer.w_q.double() * layer.w_scale.double()[:, None]
    if isinstance(layer, ks.nn.Int4Linear):
        return dequantize_int4_ref(layer.w_packed, layer.scales, layer.zeros, layer.group_size)[:, :k].double()
    w = decompress_24_ref(layer.values, layer.meta)[:, :k].double()
    return w * layer.w_scale.double()[:, None] if layer.int8 else w


@pytest.mark.parametrize("recipe", RECIPES)
def test_input_gradient_through_every_linear_recipe(recipe):
    net = nn.Sequential(nn.Linear(40, 24), nn.Linear(24, 8)).eval()
    ks.swap(net, recipe)
    x = torch.randn(3, 5, 40, requires_grad=True)
    y = net(x)
    assert y.grad_fn is not None, f"{recipe}: the output of a swapped layer lost its grad_fn"
    g = torch.randn_like(y)
    y.backward(g)
    # Expected: dx = ((g @ W1) @ W0) with the dense weights (float64).
    w0, w1 = _dense_weight(net[0]), _dense_weight(net[1])
    expected = (g.double() @ w1) @ w0
    assert x.grad is not None
    baseline = ((g @ w1.float()) @ w0.float())  # the same product in fp32: PyTorch's own error
    assert_close_to_ref(x.grad, expected, baseline, factor=4.0, floor=1e-6, what=f"{recipe} dx")


def test_fused_conv_gradient_is_the_reference_gradient():
    conv = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.SiLU()).eval()
    with torch.no_grad():
        conv[1].running_var.uniform_(0.5, 2.0)
    fused = copy.deepcopy(conv)
    ks.swap(fused, "fuse")
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(2, 6, 7, 7)
    conv(x).backward(g)
    fused(x2).backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)  # fp32; BN folded in float64


def test_conv_residual_gets_its_gradient():
    m = ks.nn.ConvBNAct2d(3, 3, 1, activation="relu")
    with torch.no_grad():
        m.weight.copy_(torch.randn_like(m.weight))
    x = torch.randn(1, 3, 4, 4)
    r = torch.randn(1, 3, 4, 4, requires_grad=True)
    y = m(x, r)
    y.sum().backward()
    expected = (y > 0).float()  # relu': d(sum)/d(residual) is 1 where the output is positive
    torch.testing.assert_close(r.grad, expected)


def _swapped(recipe="int8"):
    net = nn.Sequential(nn.Linear(32, 16, bias=False)).eval()
    ks.swap(net, recipe)
    return net


def test_runner_is_kept_per_layout_and_reused():
    net = _swapped()
    layer = net[0]
    layer.prepare()  # forgets the runners (swap may have run the layer to check it)
    with torch.no_grad():
        a = net(torch.randn(2, 32))
        assert len(layer._runs) == 1
        net(torch.randn(2, 32))
        assert len(layer._runs) == 1
        net(torch.randn(3, 32))
        net(torch.randn(1, 2, 32))
        assert len(layer._runs) == 3
    assert a.shape == (2, 16)


def test_runner_matches_the_op_on_every_layout():
    net = _swapped("int4")
    layer = net[0]
    wide = torch.randn(5, 64)
    cases = [torch.randn(4, 32), torch.randn(2, 3, 32), wide[:, ::2], torch.randn(0, 32), torch.randn(2, 0, 32)]
    with torch.no_grad():
        for x in cases:
            for _ in range(2):  # first call binds, second replays
                got = net(x)
                want = ks.ops.int4_linear(x, *layer.op_args())
                torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_copied_module_does_not_reuse_the_originals_runner():
    net = _swapped()
    x = torch.randn(2, 32)
    with torch.no_grad():
        net(x)
        twin = copy.deepcopy(net)
        assert len(twin[0]._runs) == 0
        twin[0].w_q.zero_()  # the copy's own buffers; the original must be unaffected
        twin[0].prepare()
        assert torch.count_nonzero(twin(x)) == 0
        assert torch.count_nonzero(net(x)) > 0


def test_swapped_buffer_is_noticed():
    """functional_call and direct assignment replace buffers without __setattr__ hooks."""
    net = _swapped("int8-weight")
    layer = net[0]
    x = torch.randn(2, 32)
    with torch.no_grad():
        before = net(x)
        zero_scale = torch.zeros_like(layer.w_scale)
        out = torch.func.functional_call(net, {"0.w_scale": zero_scale}, (x,))
        assert torch.count_nonzero(out) == 0
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def test_load_state_dict_refreshes_runners():
    a, b = _swapped(), _swapped()
    x = torch.randn(2, 32)
    with torch.no_grad():
        b(x)  # bind b's runner
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_forced_backend_is_part_of_the_layout(monkeypatch):
    net = _swapped()
    calls = []
    real = backend._choose

    def counting(op, device, args):
        calls.append(backend.forced_backend())
        return real(op, device, args)

    monkeypatch.setattr("kernelswap.ops._runner._choose", counting)
    x = torch.randn(2, 32)
    with torch.no_grad():
        net(x)
        with ks.use_backend("reference"):
            net(x)
        net(x)
    assert calls == [None, "reference"]


def test_bad_input_still_named_on_the_fast_path():
    net = _swapped()
    with torch.no_grad():
        net(torch.randn(2, 32))
        with pytest.raises(ValueError, match="expected input of shape"):
            net(torch.randn(2, 31))


def test_runner_skipped_under_tracing():
    net = _swapped()
    with torch.no_grad():
        net(torch.randn(2, 32))
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True)
        x = torch.randn(2, 32)
        torch.testing.assert_close(compiled(x), net(x), rtol=0, atol=0)


def test_prepared_layouts_are_counted():
    """A layer's prepared layouts count toward its device memory; a cache entry made here stands for
    one (the CPU reference path prepares none)."""
    from kernelswap.ops._prepared import PreparedWeights
    net = _swapped("int8")
    layer = net[0]
    assert layer.prepared_bytes() == 0  # nothing prepared for the CPU reference path
    cache = PreparedWeights("test layout")
    cache.get((layer.w_q,), lambda: (torch.empty(10, dtype=torch.int8), torch.empty(3, dtype=torch.float32)))
    assert layer.prepared_bytes() == 10 + 12


def test_a_layer_says_which_backend_served_it():
    net = _swapped()
    layer = net[0]
    layer.prepare()
    assert layer.served_by() is None
    with torch.no_grad():
        net(torch.randn(2, 32))
        assert layer.served_by() == "reference"
        with ks.use_backend("reference"):
            net(torch.randn(3, 32))
        assert layer.served_by() == "reference"
    layer.prepare()
    assert layer.served_by() is None
