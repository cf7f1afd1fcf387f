"""pytest-benchmark of the CPU reference paths and the swap-time steps (pack, prune, fold, swap).

Tracks what the fallback path and a swap cost, so a change that makes them much slower
shows up in `pytest --benchmark-autosave` history. Each benchmark also checks its
result, so it is a test too. In CI: `--benchmark-disable` runs each body once.
Shapes are small (a Llama-like 512 -> 1376 linear at M = 16; a 32-channel 3x3 conv)
so the whole file takes seconds under TRITON_INTERPRET=1 as well.
"""
import pytest
import torch
import torch.nn.functional as F

import kernelswap as ks
from kernelswap import packing
from kernelswap.ops.conv import conv_bn_act_ref
from kernelswap.ops.int4 import int4_linear_ref
from kernelswap.ops.int8 import int8_linear_ref, int8_weight_linear_ref
from kernelswap.ops.sparse24 import sparse24_int8_linear_ref, sparse24_linear_ref
from utils import assert_close_to_ref, assert_exact, sqnr_db

M, K, N = 16, 512, 1376
ROUNDS = dict(rounds=5, iterations=1, warmup_rounds=1)


@pytest.fixture
def benchmark_or_none(request):
    """pytest-benchmark's fixture, or None where the plugin is missing or off (-p no:benchmark)."""
    try:
        return request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        return None


def _bench(benchmark, fn, *args):
    """A few rounds: enough to track, cheap enough for the CPU suite. Without the plugin: once."""
    if benchmark is None:
        return fn(*args)
    return benchmark.pedantic(fn, args=args, **ROUNDS)


@pytest.fixture
def layer():
    w = torch.randn(N, K) / K**0.5
    return torch.randn(M, K, dtype=torch.bfloat16), w, torch.randn(N) * 0.1


def _ref64(x, w, b):
    return x.double() @ w.double().t() + b.double()


# ---------------------------------------------------------------- reference ops
def test_int8_linear_reference(benchmark_or_none, layer):
    x, w, b = layer
    w_q, w_s = packing.quantize_int8(w)
    out = _bench(benchmark_or_none, int8_linear_ref, x, w_q, w_s, b)
    assert sqnr_db(_ref64(x, w, b), out) > 30  # int8 x int8: ~40 dB on Gaussian data


def test_int8_weight_linear_reference(benchmark_or_none, layer):
    x, w, b = layer
    w_q, w_s = packing.quantize_int8(w)
    out = _bench(benchmark_or_none, int8_weight_linear_ref, x, w_q, w_s, b)
    deq = packing.dequantize_int8(w_q, w_s)
    assert_close_to_ref(out, _ref64(x, deq, b), F.linear(x, deq.to(x.dtype), b.to(x.dtype)), what="W8A16 ref")


def test_int4_linear_reference(benchmark_or_none, layer):
    x, w, b = layer
    q = packing.quantize_int4(w, 128)
    out = _bench(benchmark_or_none, int4_linear_ref, x, q.packed, q.scales, q.zeros, q.group_size, b)
    deq = packing.dequantize_int4(q)
    assert_close_to_ref(out, _ref64(x, deq, b), F.linear(x, deq.to(x.dtype), b.to(x.dtype)), what="W4A16 ref")


def test_sparse24_linear_reference(benchmark_or_none, layer):
    x, w, b = layer
    pruned = packing.prune_24(w).to(x.dtype)
    values, meta = packing.compress_24(pruned)
    out = _bench(benchmark_or_none, sparse24_linear_ref, x, values, meta, b)
    assert_close_to_ref(out, _ref64(x, pruned, b), F.linear(x, pruned, b.to(x.dtype)), what="2:4 ref")


def test_sparse24_int8_linear_reference(benchmark_or_none, layer):
    x, w, b = layer
    w_q, w_s = packing.quantize_int8(packing.prune_24(w))
    values, meta = packing.compress_24(w_q)
    out = _bench(benchmark_or_none, sparse24_int8_linear_ref, x, values, meta, w_s, b)
    assert_exact(out, int8_linear_ref(x, w_q, w_s, b), what="2:4 int8 ref vs dense int8 ref")


def test_conv_bn_act_reference(benchmark_or_none):
    x = torch.randn(2, 32, 28, 28, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(32, 32, 3, 3) / 17, torch.randn(32) * 0.1
    out = _bench(benchmark_or_none, conv_bn_act_ref, x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", None)
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double(), 1, 1))
    base = F.relu(F.conv2d(x, w.to(x.dtype), b.to(x.dtype), 1, 1))
    assert_close_to_ref(out, ref, base, what="conv_bn_act ref")
    assert out.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- swap-time steps
def test_quantize_int4_step(benchmark_or_none, layer):
    _, w, _ = layer
    q = _bench(benchmark_or_none, packing.quantize_int4, w, 128)
    assert sqnr_db(w, packing.dequantize_int4(q)) > 15  # 4 bits, group 128: ~20 dB on Gaussian weights


def test_prune_and_compress_step(benchmark_or_none, layer):
    _, w, _ = layer
    values, meta = _bench(benchmark_or_none, lambda t: packing.compress_24(packing.prune_24(t)), w)
    assert_exact(packing.decompress_24(values, meta, K), packing.prune_24(w), what="compress round trip")


def test_fold_bn_step(benchmark_or_none):
    bn = torch.nn.BatchNorm2d(64).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    w = torch.randn(64, 32, 3, 3)
    w_f, b_f = _bench(benchmark_or_none, packing.fold_bn, w, None, bn)
    x = torch.randn(1, 32, 8, 8)
    ref = bn(F.conv2d(x.double(), w.double(), padding=1).float()).double()
    assert_close_to_ref(F.conv2d(x, w_f, b_f, padding=1), ref, bn(F.conv2d(x, w, padding=1)), what="fold_bn")


@pytest.mark.parametrize("recipe", ["int8", "int4", "sparse24"])
def test_swap_step(benchmark_or_none, recipe):
    def swap_fresh():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.ReLU(), torch.nn.Linear(N, K)).eval()
        return ks.swap(model, recipe, probe=False)

    report = _bench(benchmark_or_none, swap_fresh)
    assert len(report.swapped) == 2, str(report)
