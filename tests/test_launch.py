"""kernels/_launch: replaying a tuned Triton kernel without Triton's per-call Python (CPU).

Triton's wrappers are real objects (JITFunction, Heuristics, Autotuner) around a kernel
that is never compiled: the autotuner's launch is replaced by a fake that returns a fake
compiled kernel, whose `run` records what the fast path hands it.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from kernelswap.kernels import _launch  # noqa: E402


def _body(x, n, BLOCK: tl.constexpr, EVEN: tl.constexpr, FLAG: tl.constexpr = 3):
    pass


class _Compiled:
    function, packed_metadata = "function", "packed"

    def __init__(self):
        self.runs = []

    def run(self, *args):
        self.runs.append(args)

    def launch_metadata(self, *args):
        return None


def _tuned_kernel(pre_hook=None):
    jit = triton.runtime.JITFunction(_body)
    heur = object.__new__(triton.runtime.Heuristics)
    heur.fn, heur.arg_names = jit, jit.arg_names
    heur.values = {"EVEN": lambda a: a["n"] % a["BLOCK"] == 0}
    auto = object.__new__(triton.runtime.Autotuner)
    auto.fn, auto.best_config = heur, triton.Config({"BLOCK": 32}, pre_hook=pre_hook)
    compiled, slow = _Compiled(), []

    def full_path(*args, grid, warmup, **kwargs):
        slow.append((args, kwargs))
        return compiled

    auto.run = full_path
    return auto, compiled, slow


@pytest.fixture
def gpu_free(monkeypatch):
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 7, raising=False)
    _launch.clear()
    yield
    _launch.clear()


def test_second_launch_of_a_layout_goes_straight_to_the_compiled_kernel(gpu_free):
    kernel, compiled, slow = _tuned_kernel()
    grid = lambda meta: (meta["n"] // meta["BLOCK"],)  # noqa: E731
    assert _launch.launch(kernel, grid, (torch.zeros(4), 64), {"num_warps": 4}) == {"BLOCK": 32}
    assert len(slow) == 1 and not compiled.runs
    y = torch.ones(4)
    assert _launch.launch(kernel, grid, (y, 64), {"num_warps": 4}) == {"BLOCK": 32}
    assert len(slow) == 1 and len(compiled.runs) == 1
    g0, g1, g2, stream, function, packed, meta, _, _, *values = compiled.runs[0]
    assert (g0, g1, g2, stream, function, packed, meta) == (2, 1, 1, 7, "function", "packed", None)
    # this call's tensor, the ints of the layout, the tuned BLOCK, the heuristic, the default
    assert values[0] is y and values[1:] == [64, 32, True, 3]


def test_a_new_layout_takes_the_full_path(gpu_free):
    kernel, compiled, slow = _tuned_kernel()
    grid = (1,)
    _launch.launch(kernel, grid, (torch.zeros(4), 64), {})
    _launch.launch(kernel, grid, (torch.zeros(4), 48), {})  # another int: maybe another config
    _launch.launch(kernel, grid, (torch.zeros(4, dtype=torch.float16), 64), {})  # another dtype
    _launch.launch(kernel, grid, (torch.zeros(5)[1:], 64), {})  # off 16-byte alignment
    _launch.launch(kernel, grid, (torch.zeros(4), 64), {"FLAG": 5})  # another constexpr
    assert len(slow) == 5 and not compiled.runs


def test_what_cannot_be_replayed_always_takes_the_full_path(gpu_free):
    kernel, compiled, slow = _tuned_kernel(pre_hook=lambda nargs: None)  # e.g. TMA block shapes
    for _ in range(3):
        _launch.launch(kernel, (1,), (torch.zeros(4), 64), {})
    assert len(slow) == 3 and not compiled.runs
    kernel, compiled, slow = _tuned_kernel()
    for _ in range(2):
        _launch.launch(kernel, (1,), (object(), 64), {})  # not a tensor nor a plain value
    assert len(slow) == 2 and not compiled.runs
