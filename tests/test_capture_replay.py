"""The ks.capture runner's bookkeeping, on the CPU, against a stand-in for a CUDA graph.

The stand-in records the aten ops that run while "capturing" (a TorchDispatchMode) and on replay
runs them again on the same tensors, writing into the same output tensors: what a CUDA graph does
with its static buffers, and, like one, it never runs the Python forward again. Its capture
refuses a host sync the way CUDA does. With it the runner's dispatch on signatures, the copies
in and out, warm-up counts, the LRU bound, capture_new, reuse_outputs, inputs written in place,
ks.prepare's order and the capture-error message are checked here; tests/test_capture_gpu.py
checks the same with real graphs on a GPU.
"""
import contextlib
import importlib

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import kernelswap as ks
from kernelswap.capture import CaptureError

capture_mod = importlib.import_module("kernelswap.capture")  # the module (ks.capture is the function)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:  # .item(): a host sync
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class StandInGraph:
    def __init__(self):
        self.ops = None
        self.replays = 0

    @torch.no_grad()  # kernels, no autograd, as in a graph
    def replay(self):
        for func, args, kwargs, out in self.ops:
            new = func(*args, **kwargs)
            for o, n in zip(pytree.tree_leaves(out), pytree.tree_leaves(new)):
                if isinstance(o, torch.Tensor) and o is not n:
                    o.copy_(n)  # the recorded output is the static buffer the next ops read
        self.replays += 1


class _Stream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def stand_in(monkeypatch):
    """torch.cuda as ks.capture uses it, on the CPU: streams are no-ops, graphs are StandInGraphs."""
    graphs, streams_set = [], []
    warmed_on = []  # the streams torch.cuda.stream(s) made current: the warm-ups'

    @contextlib.contextmanager
    def graph(g, pool=None, stream=None):
        assert stream is not None and stream is warmed_on[-1], "capture on a stream other than the warm-up's"
        rec = _Recorder()
        try:
            with rec:
                yield
        except Exception:
            # torch.cuda.graph's exit raises its own error on top of the cause, as here
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        g.ops = rec.ops
        graphs.append(g)

    stream = _Stream()
    for name, value in dict(is_available=lambda: True, Stream=_Stream, current_stream=lambda *a: stream,
                            stream=lambda s: warmed_on.append(s) or contextlib.nullcontext(),
                            synchronize=lambda *a: None,
                            graph_pool_handle=lambda: object(), CUDAGraph=StandInGraph, graph=graph,
                            set_stream=streams_set.append, device=lambda d: contextlib.nullcontext(),
                            current_device=lambda: 0).items():
        monkeypatch.setattr(torch.cuda, name, value)
    # CPU tensors and parameters stand for GPU ones here
    monkeypatch.setattr(capture_mod, "device_of", lambda args, kwargs, leaves: None)
    monkeypatch.setattr(capture_mod, "check_cuda", lambda model: None)
    return graphs, streams_set


class Counted(nn.Module):
    """A small MLP that counts how often its Python forward runs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
        self.calls = 0

    def forward(self, x, scale=1.0):
        self.calls += 1
        return self.net(x) * scale


def eager(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs)


def test_replays_new_inputs_without_running_python(stand_in):
    model = Counted().eval()
    runner = ks.capture(model, torch.randn(4, 6), warmup=2)
    assert model.calls == 3  # two warm-up calls and the capture
    outs = [(x, runner(x)) for x in (torch.randn(4, 6) for _ in range(3))]
    assert model.calls == 3 and stand_in[0][0].replays == 3  # replays only
    for x, out in outs:  # fresh tensors: an earlier output is not overwritten by a later call
        torch.testing.assert_close(out, eager(model, x), rtol=0, atol=0)


def test_signatures_recapture_and_lru(stand_in):
    model = Counted().eval()
    runner = ks.capture(model, torch.randn(1, 6), cache_size=2)
    calls = lambda: model.calls // 4  # noqa: E731 - captures so far (three warm-ups and a capture each)
    x = {m: torch.randn(m, 6) for m in (1, 2, 3)}
    runner(x[1])
    assert calls() == 1
    runner(x[2], scale=2.0)
    runner(x[2], scale=2.0)
    assert calls() == 2
    runner(x[2], scale=3.0)  # another non-tensor value: another graph, evicting the least recent (x[1])
    assert calls() == 3 and len(runner.graphs) == 2 and runner.captures == 3
    torch.testing.assert_close(runner(x[1]), eager(model, x[1]), rtol=0, atol=0)  # captured again
    assert calls() == 4
    assert runner.signatures == ["(float32[2, 6]@cpu, 3.0)", "(float32[1, 6]@cpu)"]


def test_capture_new_false(stand_in):
    runner = ks.capture(Counted().eval(), torch.randn(2, 6), capture_new=False)
    runner(torch.randn(2, 6))
    with pytest.raises(CaptureError, match=r"no graph for inputs \(float32\[5, 6\]@cpu\) and capture_new=False "
                                           r"\(captured: \(float32\[2, 6\]@cpu\)\)"):
        runner(torch.randn(5, 6))
    runner.capture_new = True
    runner(torch.randn(5, 6))
    assert runner.captures == 2


def test_reuse_outputs(stand_in):
    model = Counted().eval()
    runner = ks.capture(model, torch.randn(2, 6), reuse_outputs=True)
    x1, x2 = torch.randn(2, 6), torch.randn(2, 6)
    a = runner(x1)
    torch.testing.assert_close(a, eager(model, x1), rtol=0, atol=0)
    b = runner(x2)
    assert b is a  # the graph's own output tensor, overwritten
    torch.testing.assert_close(a, eager(model, x2), rtol=0, atol=0)


class Nested(nn.Module):
    def forward(self, x, *, extra):
        return {"sum": x + extra["bias"], "pair": (x * extra["k"], "tag"), "none": None}


def test_nested_inputs_and_outputs(stand_in):
    model = Nested().eval()
    runner = ks.capture(model, torch.randn(3), extra={"bias": torch.randn(3), "k": 2})
    x, extra = torch.randn(3), {"bias": torch.randn(3), "k": 2}
    out = runner(x, extra=extra)
    assert out["pair"][1] == "tag" and out["none"] is None
    torch.testing.assert_close(out["sum"], x + extra["bias"], rtol=0, atol=0)
    torch.testing.assert_close(out["pair"][0], x * 2, rtol=0, atol=0)
    runner(x, extra={"bias": extra["bias"], "k": 3})
    assert runner.captures == 2  # k is a Python value: part of the signature


class Accumulate(nn.Module):
    def forward(self, state, x):
        state.add_(x)
        return state * 2


def test_inputs_written_in_place_are_copied_back(stand_in):
    example = torch.zeros(2, 3)
    runner = ks.capture(Accumulate().eval(), example, torch.ones(2, 3))
    assert bool((example == 0).all())  # warm-up and capture ran on copies
    assert next(iter(runner.graphs._entries.values())).mutated == [0]
    state, ref = torch.zeros(2, 3), torch.zeros(2, 3)
    for _ in range(3):
        x = torch.randn(2, 3)
        out = runner(state, x)
        ref += x
        torch.testing.assert_close(state, ref, rtol=0, atol=0)
        torch.testing.assert_close(out, ref * 2, rtol=0, atol=0)


class Syncs(nn.Module):
    def forward(self, x):
        if x.abs().max().item() > 1e30:
            x = x * 0
        return x * 2


def test_capture_error_names_cause_and_layer(stand_in):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Syncs())).eval()
    with pytest.raises(CaptureError) as info:
        ks.capture(model, torch.randn(2, 4))
    msg = str(info.value)
    assert "could not be captured in a CUDA graph (raised inside layer 1.1 (Syncs))" in msg
    assert "RuntimeError: CUDA error: operation not permitted when stream is capturing" in msg  # the cause
    assert ".item()" in msg and "ks.prepare(model)" in msg  # the usual causes and what to do
    assert stand_in[1], "the caller's stream is restored after the failed capture"
    assert not model._forward_hooks and not model[1][1]._forward_pre_hooks  # the layer hooks are removed


def test_prepare_runs_before_warm_up(stand_in):
    order = []
    model = nn.Sequential(nn.Linear(32, 32)).eval()
    ks.swap(model, "int8", probe=False)
    model[0].prepare = lambda: order.append("prepare")
    model.register_forward_pre_hook(lambda m, a: order.append("forward"))
    runner = ks.capture(model, torch.randn(3, 32))
    assert order == ["prepare", "forward", "forward", "forward", "forward"]
    x = torch.randn(3, 32)
    torch.testing.assert_close(runner(x), eager(model, x), rtol=0, atol=0)  # a swapped model replays too


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated, yet models still hold it
def test_scripted_submodules_are_captured(stand_in):
    model = nn.Sequential(nn.Linear(4, 4), torch.jit.script(nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))).eval()
    runner = ks.capture(model, torch.randn(3, 4))  # no Python hooks on the ScriptModule: still captured
    x = torch.randn(3, 4)
    torch.testing.assert_close(runner(x), eager(model, x), rtol=0, atol=0)
