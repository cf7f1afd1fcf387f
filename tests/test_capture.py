"""ks.capture without a GPU: the refusals read clearly, signatures and the LRU cache, ks.prepare.

The GPU behaviour (replay equals eager, re-capture, reuse_outputs) is in tests/test_capture_gpu.py.
"""
import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.capture import CaptureError, GraphCache, describe, leaf_path, signature, unflatten

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, scale=1.0):
        return self.drop(self.lin(x)) * scale


# ---------------------------------------------------------------- refusals
@no_cuda
def test_refuses_without_cuda():
    with pytest.raises(CaptureError, match="ks.capture needs a CUDA device .* none is available here"):
        ks.capture(Block().eval(), scale=2.0)  # no tensor input: the missing GPU is the first problem


def test_refuses_without_cuda_even_where_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CaptureError, match="needs a CUDA device"):
        ks.capture(Block().eval(), scale=2.0)


@pytest.mark.parametrize("call, path", [
    (lambda m, x: ks.capture(m, x), "args[0]"),
    (lambda m, x: ks.capture(m, x.cuda() if torch.cuda.is_available() else 3, x), "args[1]"),
    (lambda m, x: ks.capture(m, (1, [x])), "args[0][1][0]"),
    (lambda m, x: ks.capture(m, 1, cache={"k": x}, a=2), "kwargs['cache']['k']"),
], ids=["positional", "second", "nested", "kwarg"])
def test_refuses_cpu_tensor_input_and_names_it(call, path):
    with pytest.raises(CaptureError, match=rf"input {path.replace('[', '.').replace(']', '.')} is a cpu tensor"):
        call(Block().eval(), torch.randn(2, 8))


def test_refuses_training_mode_and_names_the_layer():
    with pytest.raises(CaptureError, match=r"the model \(Block\) is in training mode.*model.eval\(\)"):
        ks.capture(Block().train(), torch.randn(2, 8))
    model = Block().eval()
    model.drop.train()
    with pytest.raises(CaptureError, match=r"layer 'drop' \(Dropout\) is in training mode"):
        ks.capture(model, torch.randn(2, 8))


@pytest.mark.parametrize("kwargs, message", [
    (dict(cache_size=0), "cache_size must be a positive int, got 0"),
    (dict(warmup=0), "warmup must be a positive int"),
])
def test_refuses_bad_options(kwargs, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the option checks come first
    with pytest.raises(ValueError, match=message):
        ks.capture(Block().eval(), scale=2.0, **kwargs)


def test_unhashable_argument_is_named():
    with pytest.raises(TypeError, match=r"the argument kwargs\['opts'\] is a set"):
        signature((torch.zeros(2),), {"opts": {1, 2}})


# ---------------------------------------------------------------- signatures
def test_signature_matches_shape_dtype_device_and_values():
    x = torch.randn(2, 8)
    base = signature((x,), {})[0]
    assert signature((torch.zeros(2, 8),), {})[0] == base  # values do not matter
    assert signature((x.t().contiguous().t(),), {})[0] == base  # nor strides (the copy converts)
    for other in (torch.zeros(3, 8), torch.zeros(2, 8, dtype=torch.float64), torch.zeros(2, 8).unsqueeze(0)):
        assert signature((other,), {})[0] != base
    assert signature((x, x), {})[0] != base  # another number of arguments
    assert signature((x,), {"scale": 2.0})[0] != base


def test_signature_of_non_tensor_values():
    x = torch.randn(4)
    sig = lambda *a, **k: signature(a, k)[0]  # noqa: E731
    assert sig(x, 2.0) == sig(torch.ones(4), 2.0)
    assert sig(x, 2.0) != sig(x, 3.0)
    # 1, 1.0 and True are equal in Python but select different code in a forward
    assert len({sig(x, 1), sig(x, 1.0), sig(x, True)}) == 3
    assert sig(x, mode="a") != sig(x, mode="b")
    assert sig(x, None) != sig(x, 0)


def test_signature_of_nested_structures():
    x, y = torch.randn(2, 3), torch.randn(5)
    sig = lambda *a, **k: signature(a, k)[0]  # noqa: E731
    assert sig((x, y)) == sig((x.clone(), y.clone()))
    assert sig((x, y)) != sig([x, y])  # tuple and list are different structures
    assert sig({"a": x, "b": y}) != sig({"a": x, "c": y})
    assert sig(x, a=x, b=y) == sig(x, b=y, a=x)  # keyword order does not matter
    assert sig({"a": x}) != sig({"a": y})


def test_signature_leaves_round_trip():
    x, y = torch.randn(2, 3), torch.randn(5)
    for args, kwargs in (((x, y), {}), ((x, (1, [y])), {"opt": {"k": x}, "flag": True})):
        _, leaves, spec = signature(args, kwargs)
        a, k = unflatten(leaves, spec)
        assert len(a) == len(args) and set(k) == set(kwargs)
        assert [id(t) for t in signature(a, k)[1]] == [id(t) for t in leaves]


def test_leaf_path_and_describe():
    x = torch.randn(2, 3)
    args, kwargs = (x, (1, [x])), {"z": x, "a": 2.5}
    _, leaves, _ = signature(args, kwargs)
    paths = [leaf_path(args, kwargs, i) for i in range(len(leaves))]
    assert paths == ["args[0]", "args[1][0]", "args[1][1][0]", "kwargs['a']", "kwargs['z']"]
    assert describe(signature((x,), {"a": 2.5})[0]) == "(float32[2, 3]@cpu, 2.5)"


# ---------------------------------------------------------------- LRU cache
def test_graph_cache_evicts_least_recently_used():
    cache = GraphCache(2)
    assert cache.put("a", 1) == [] and cache.put("b", 2) == []
    assert cache.get("a") == 1  # a is now the most recent
    assert cache.put("c", 3) == ["b"]
    assert "b" not in cache and cache.get("b") is None
    assert cache.keys() == ["a", "c"] and len(cache) == 2
    assert cache.put("a", 10) == [] and cache.keys() == ["c", "a"]  # re-put refreshes, no eviction
    assert cache.put("d", 4) == ["c"]
    cache.clear()
    assert len(cache) == 0


def test_graph_cache_of_one():
    cache = GraphCache(1)
    cache.put("a", 1)
    assert cache.put("b", 2) == ["a"] and cache.keys() == ["b"]


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_graph_cache_size_must_be_positive_int(size):
    with pytest.raises(ValueError, match="cache_size must be a positive int"):
        GraphCache(size)


# ---------------------------------------------------------------- prepare
def test_prepare_calls_each_kernelswap_module_that_has_prepare():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    ks.swap(model, "int8", probe=False)
    called = []

    class Other(nn.Module):  # not a kernelswap module: its prepare is the user's business
        def prepare(self):
            raise AssertionError("ks.prepare called a non-kernelswap module")

    model.append(Other())
    swapped = [m for m in model.modules() if isinstance(m, ks.nn.KernelswapModule)]
    assert len(swapped) == 2
    for m in swapped:
        m.prepare = lambda m=m: called.append(m)  # record the calls instead of preparing
    assert ks.prepare(model) == 2
    assert called == swapped


def test_prepare_tolerates_modules_without_prepare():
    model = nn.Sequential(nn.Linear(64, 64)).eval()
    ks.swap(model, "int8", probe=False)
    layer = model[0]
    expected = 1 if callable(getattr(layer, "prepare", None)) else 0
    assert ks.prepare(model) == expected
    assert ks.prepare(nn.Sequential(nn.Linear(4, 4))) == 0
