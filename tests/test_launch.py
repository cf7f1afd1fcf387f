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


def test_turned_off_every_launch_takes_the_full_path(gpu_free, monkeypatch):
    monkeypatch.setattr(_launch, "ENABLED", False)  # as KERNELSWAP_FAST_LAUNCH=0 at import
    kernel, compiled, slow = _tuned_kernel()
    for _ in range(3):
        assert _launch.launch(kernel, (1,), (torch.zeros(4), 64), {}) == {"BLOCK": 32}
    assert len(slow) == 3 and not compiled.runs and not _launch._CACHE


def test_what_cannot_be_replayed_always_takes_the_full_path(gpu_free):
    kernel, compiled, slow = _tuned_kernel(pre_hook=lambda nargs: None)  # e.g. TMA block shapes
    for _ in range(3):
        _launch.launch(kernel, (1,), (torch.zeros(4), 64), {})
    assert len(slow) == 3 and not compiled.runs
    kernel, compiled, slow = _tuned_kernel()
    for _ in range(2):
        _launch.launch(kernel, (1,), (object(), 64), {})  # not a tensor nor a plain value
    assert len(slow) == 2 and not compiled.runs


# ---------------------------------------------------------------- GPU: the fast path's results
def _gpu_cases():
    """(name, op call on fresh inputs of one layout, its reference, exact?) for every Triton launcher."""
    import kernelswap as ks
    from kernelswap import packing
    from kernelswap.ops import conv, int4, int8, sparse24

    dev, k, n = "cuda", 320, 192
    w = torch.randn(n, k, device=dev)
    w_q, w_s = packing.quantize_int8(w)
    q4 = packing.quantize_int4(w, 64, symmetric=False)
    sp = packing.prune_24(w)
    vals, meta = packing.compress_24(sp.to(torch.bfloat16))
    spq, spq_s = packing.quantize_int8(sp)
    qv, qm = packing.compress_24(spq)
    bias = torch.randn(n, device=dev, dtype=torch.bfloat16)
    for m in (1, 16, 33):
        yield f"int8_linear m={m}", m, k, lambda x: ks.ops.int8_linear(x, w_q, w_s, bias), \
            lambda x: int8.int8_linear_ref(x, w_q, w_s, bias), True
        yield f"int8_weight_linear m={m}", m, k, lambda x: ks.ops.int8_weight_linear(x, w_q, w_s, bias), \
            lambda x: int8.int8_weight_linear_ref(x, w_q, w_s, bias), False
        yield f"int4_linear m={m}", m, k, lambda x: ks.ops.int4_linear(x, q4.packed, q4.scales, q4.zeros, 64, bias), \
            lambda x: int4.int4_linear_ref(x, q4.packed, q4.scales, q4.zeros, 64, bias), False
        yield f"sparse24_linear m={m}", m, k, lambda x: ks.ops.sparse24_linear(x, vals, meta, bias), \
            lambda x: sparse24.sparse24_linear_ref(x, vals, meta, bias), False
        yield f"sparse24_int8_linear m={m}", m, k, lambda x: ks.ops.sparse24_int8_linear(x, qv, qm, spq_s, bias), \
            lambda x: sparse24.sparse24_int8_linear_ref(x, qv, qm, spq_s, bias), True
    for groups, kk, c in ((1, 3, 48), (48, 3, 48)):
        wc = (torch.randn(c, 48 // groups, kk, kk, device=dev) * 0.2).to(torch.bfloat16)
        bc = torch.randn(c, device=dev, dtype=torch.bfloat16)
        args = ([1, 1], [1, 1], [1, 1], groups, "relu", None)
        yield f"conv groups={groups}", None, None, lambda x: ks.ops.conv_bn_act(x, wc, bc, *args), \
            lambda x: conv.conv_bn_act_ref(x, wc, bc, *args), False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_repeat_launches_read_each_calls_tensors():
    """Three calls of one layout with different values: the second and third take the fast
    path and must compute on their own inputs (int paths bit-exact, float close)."""
    from kernelswap.ops import use_backend
    from utils import assert_exact, rel_err

    torch.manual_seed(0)
    _launch.clear()
    for name, m, k, op, ref, exact in _gpu_cases():
        for rep in range(3):
            if m is None:
                x = torch.randn(2, 48, 9, 11, device="cuda", dtype=torch.bfloat16)
                x = x.contiguous(memory_format=torch.channels_last)
            else:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            with use_backend("triton"):
                out = op(x)
            expect = ref(x)
            if exact:
                assert_exact(out, expect, f"{name} call {rep}")
            else:
                assert rel_err(out, expect) < 2e-2, f"{name} call {rep}: rel err {rel_err(out, expect):.3g}"
    # the layouts above were kept as replayable, so calls 2 and 3 went through the fast path
    assert any(v is not _launch._NOT_REPLAYABLE for v in _launch._CACHE.values())
