"""Everything built and run under torch.inference_mode, the way inference code often loads a model.

Tensors made there keep no version counter, so nothing may read one: the prepared layouts
(ops/_prepared.py) key them by identity alone, and the ensemble folds (_ensemble_fold.py)
recompute instead of caching. Each case builds (swap, fuse, ensemble) inside inference_mode
and checks the result against the same model built and run outside it.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.ops._prepared import PreparedWeights
from tests.test_ensemble import _cnn, _loop
from tests.utils import interpreting

pytestmark = pytest.mark.usefixtures("one_thread")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_prepared_layout_of_an_inference_tensor():
    cache, made = PreparedWeights("test: inference tensors"), []
    with torch.inference_mode():
        w = torch.randn(4, 8)
    assert w.is_inference()
    first = cache.get((w,), lambda: made.append(1) or w * 2)
    assert cache.holds((w,)) and cache.get((w,), lambda: made.append(1)) is first and made == [1]


@pytest.mark.parametrize("recipe", ["int8", "int8-weight", "int4", "sparse24", "sparse24-int8", "fp8"])
def test_swapped_inside_inference_mode(recipe):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    base = nn.Sequential(nn.Linear(256, 96), nn.GELU(), nn.Linear(96, 64)).to(DEV, dtype).eval()
    outside = copy.deepcopy(base)
    ks.swap(outside, recipe)
    x = torch.randn(16, 256, device=DEV, dtype=dtype)
    with torch.no_grad():
        want = outside(x)
    with torch.inference_mode():
        inside = copy.deepcopy(base)
        ks.swap(inside, recipe)
        got, again = inside(x), inside(x)  # the second call takes the layer's kept runner
    assert inside[0].format_version.is_inference()  # built inside: its buffers are inference tensors
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(again, want, rtol=0, atol=0)


@pytest.mark.skipif(not interpreting(), reason="the forced Triton path on CPU needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("recipe", ["int8-weight", "sparse24-int8"])
def test_triton_layer_inside_inference_mode(recipe):
    """The forced Triton kernels (their split-K counters are prepared layouts) under inference_mode."""
    base = nn.Sequential(nn.Linear(96, 80)).eval()
    with torch.inference_mode():
        ks.swap(base, recipe)
        x = torch.randn(16, 96)
        with ks.ops.use_backend("triton"):
            got = base(x)
        with ks.ops.use_backend("reference"):
            want = base(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fused_inside_inference_mode():
    torch.manual_seed(0)
    base = _cnn().to(DEV)
    outside = copy.deepcopy(base)
    ks.swap(outside, "fuse")
    x = torch.randn(2, 3, 9, 7, device=DEV)
    with torch.no_grad():
        want = outside(x)
    with torch.inference_mode():
        inside = copy.deepcopy(base)
        ks.swap(inside, "fuse")
        got = inside(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_ensemble_stamp_of_inference_tensors():
    from kernelswap._ensemble_fold import _stamp

    plain = torch.zeros(3)
    with torch.inference_mode():
        made_inside = torch.zeros(3)
    assert _stamp([plain]) == (plain._version,)
    assert _stamp([plain, made_inside]) is None  # no version to compare: recompute every call


def test_ensemble_folded_inside_inference_mode():
    """On the GPU the channel fold keeps a channels_last weight copy stamped with versions."""
    torch.manual_seed(0)
    with torch.inference_mode():
        members = [_cnn().to(DEV) for _ in range(3)]
        ens = ks.ensemble(members, "mean", batched=True)
        x = torch.randn(5, 3, 9, 7, device=DEV)
        first, second = ens(x), ens(x)
        assert ens.served_by(x) == ["channel fold"]
        for m in members:  # a write to a member's weights is seen (no version to cache on)
            m.conv.weight.mul_(0.5)
        third = ens(x)
    want = _loop(members, "mean", x)
    # The first call checks the fold against the members' own calls; on the GPU the grouped conv
    # and the members' convs differ by cuDNN's rounding (up to 2.2e-5 apart on an H200).
    tol = dict(rtol=1e-5, atol=1e-6) if DEV == "cpu" else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(second, first, **tol)
    torch.testing.assert_close(third, want, **tol)
