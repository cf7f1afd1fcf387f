"""Recorded and replayed calls (kernelswap.ops._replay): what a runner of the triton / torch backends
re-issues instead of running the implementation's Python again.

CPU: a call of plain torch ops is recorded and replayed on new inputs with the same results as
running it (allocations redone, in-place steps on the call's own buffers, several inputs, None
inputs, a view of the input as the result); calls that cannot be replayed (a value read back,
a random op, a result from outside the call) stay plain calls and keep answering right; a
Triton call under the interpreter is refused (no compiled kernel to re-issue). GPU: the layers
served by Triton and torch kernels end up replayed and agree with the registered op.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.ops import _replay

from utils import needs_cuda


def _check(fn, make, calls=4):
    r = _replay.Replayer(fn)
    for _ in range(calls):
        inputs = make()
        expected = fn(*inputs)
        got = r(*inputs)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    return r


def test_torch_ops_replay_on_new_inputs():
    w, b = torch.randn(33, 17), torch.randn(33)

    def fn(x):
        y = torch.relu(x @ w.t() + b)
        return y.to(torch.float16)

    r = _check(fn, lambda: (torch.randn(5, 17),))
    assert r.program is not None and r.why_plain is None
    assert len(r.program[0]) >= 3  # the matmul, the add, the relu, the cast (as aten ops)


def test_in_place_steps_on_the_calls_own_buffers():
    def fn(x, scale):
        acc = torch.zeros(x.shape[0], 4)
        acc.add_(x[:, :4] * scale)
        acc.mul_(2)
        return acc

    r = _check(fn, lambda: (torch.randn(3, 9), torch.randn(3, 1)))
    assert r.program is not None


def test_none_inputs_and_a_view_of_the_input():
    def fn(x, residual):
        return x.view(-1) if residual is None else (x + residual).view(-1)

    _check(fn, lambda: (torch.randn(2, 3), None))
    r = _check(fn, lambda: (torch.randn(2, 3), torch.randn(2, 3)))
    assert r.program is not None


@pytest.mark.parametrize("fn, why", [
    (lambda x: x * 2 if bool(x.sum() > 0) else x * 3, "reads a value back"),
    (lambda x: x + torch.rand_like(x), "random"),
])
def test_calls_that_branch_or_draw_stay_plain(fn, why):
    r = _replay.Replayer(fn)
    torch.manual_seed(0)
    for _ in range(_replay.RETRIES + 2):
        x = torch.randn(4)
        torch.manual_seed(1)
        expected = fn(x)
        torch.manual_seed(1)
        torch.testing.assert_close(r(x), expected)
    assert r.program is None and why in r.why_plain


def test_a_result_from_outside_the_call_stays_plain():
    kept = torch.randn(3)
    r = _replay.Replayer(lambda x: kept)
    for _ in range(_replay.RETRIES + 1):
        assert r(torch.randn(3)) is kept
    assert r.program is None and "not a tensor the call made" in r.why_plain


def test_triton_under_the_interpreter_is_refused():
    pytest.importorskip("triton")
    from kernelswap.kernels import _launch

    if not _launch.interpreting():
        pytest.skip("checks the interpreter's refusal (TRITON_INTERPRET=1)")
    from kernelswap.kernels.int8_quant import quantize_per_token
    r = _replay.Replayer(lambda x: quantize_per_token(x)[0])
    for _ in range(2):
        x = torch.randn(3, 64)
        torch.testing.assert_close(r(x), quantize_per_token(x)[0])
    assert r.program is None and "interpreter" in r.why_plain


@pytest.mark.parametrize("capturing", [False, True])
def test_scratch_is_kept_per_stream_within_the_limit_and_never_under_capture(monkeypatch, capturing):
    from kernelswap.ops import _scratch

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    kept, made = _scratch.PerStream(), []

    def make():
        made.append(object())
        return made[-1]
    first = kept.get(1, 16, make)
    assert kept.get(1, 16, make) is (made[0] if not capturing else made[1]) and first is made[0]
    assert kept.get(2, 16, make) is not first  # another stream, its own scratch
    big = kept.get(3, _scratch.LIMIT + 1, make)
    assert kept.get(3, _scratch.LIMIT + 1, make) is not big  # past the limit: made per call
    assert len(made) == (4 if not capturing else 5)


# ---------------------------------------------------------------- GPU: layers
@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("recipe, m", [("int8-weight", 16), ("sparse24", 8), ("sparse24", 16), ("int4", 128),
                                       ("int8-weight", 128), ("int4", 64)])
def test_layers_served_by_python_backends_are_replayed(recipe, m):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 528)).to("cuda", torch.bfloat16).eval()
    ks.swap(model, recipe, probe=False)
    layer = model[0]
    with torch.no_grad():
        for _ in range(_replay.RETRIES + 1):
            x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
            y = layer(x)
        if layer.served_by() not in ("triton", "torch"):
            pytest.skip(f"{recipe} M={m} is served by {layer.served_by()} here")
        run, = layer._runs.values()
        assert isinstance(run, _replay.Replayer), type(run)
        assert run.program is not None, f"{recipe} M={m}: not replayed: {run.why_plain}"
        ref = getattr(ks.ops, layer.OP).overload(x, *layer.op_args())
        torch.testing.assert_close(y, ref, rtol=1e-2, atol=1e-2)  # split-K atomics may reorder sums
