"""Split-K finished inside the launch (kernels/splitk.py), in every kernel that uses it.

The last split of each tile sums the partials in split order and runs the epilogue, then puts
the tile's counter back to 0. Checked: split-K results equal the unsplit ones (int32 paths bit
for bit; float paths within fp32 summation-order error), the same counters serve call after
call and are zero after each, launches without counters make their own, counters too small are
refused, and the swapped layers keep one set per weight from prepare() on.
CPU: TRITON_INTERPRET=1 (fp32 / fp16); CUDA: bf16 too, more calls, larger shapes.
"""
from __future__ import annotations

import pytest
import torch

import kernelswap as ks
from kernelswap import packing as P
from utils import assert_exact, kernel_device, needs_kernel_device

DEV = kernel_device()
pytestmark = needs_kernel_device

from kernelswap.kernels import int8_gemm, sparse24_gemv, splitk, w4a16_gemm, w4a16_gemv, w8a16_gemm  # noqa: E402

ON_GPU = DEV == "cuda"
CALLS = 20 if ON_GPU else 2
# (M, K, N): tails in every dimension; on the GPU enough tiles that splits of one tile land on
# different SMs and race for the counter.
SHAPES = [(1, 1000, 300), (16, 2050, 4100), (33, 1001, 520)] if ON_GPU else [(1, 100, 70), (17, 131, 45)]
TILE = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)


def _int8(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8, device=DEV)


def _calls(fn, counters):
    """fn() CALLS times; every output equal to the first, the counters zero after each call."""
    first = fn()
    for _ in range(CALLS - 1):
        assert_exact(fn(), first)
        assert not counters.any(), "a tile counter was left non-zero"
    assert not counters.any()
    return first


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_w8a8_split_equals_unsplit(m, k, n):
    a, b = _int8(m, k), _int8(n, k)
    a_s = torch.rand(m, device=DEV) + 0.5
    b_s = torch.rand(n, device=DEV) + 0.5
    bias = torch.randn(n, device=DEV)
    whole = int8_gemm.int8_scaled_mm(a, a_s, b, b_s, bias, torch.float32, split_k=1, config=TILE)
    c = splitk.counters(n, DEV)
    out = _calls(lambda: int8_gemm.int8_scaled_mm(a, a_s, b, b_s, bias, torch.float32, split_k=3, config=TILE,
                                                  counters=c), c)
    assert_exact(out, whole)  # int32 partials: the sum is exact, the epilogue the same arithmetic
    assert_exact(int8_gemm.int8_scaled_mm(a, a_s, b, b_s, bias, torch.float32, split_k=3, config=TILE), whole)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else []),
                         ids=str)
def test_w8a16_split_is_deterministic(m, k, n, dtype):
    x = torch.randn(m, k, device=DEV, dtype=dtype)
    w, w_s = _int8(n, k), torch.rand(n, device=DEV) / 64
    config = TILE if dtype != torch.float32 or not ON_GPU else dict(TILE, BLOCK_M=32, BLOCK_N=32)
    whole = w8a16_gemm.int8_weight_linear(x, w, w_s, None, split_k=1, config=config)
    c = splitk.counters(n, DEV)
    out = _calls(lambda: w8a16_gemm.int8_weight_linear(x, w, w_s, None, split_k=4, config=config, counters=c), c)
    # fp32 partials summed in another order than the unsplit loop: equal to rounding of the output.
    torch.testing.assert_close(out.float(), whole.float(), rtol=1e-2, atol=1e-2 * whole.float().abs().max().item())


@pytest.mark.parametrize("m", [1, 3] if not ON_GPU else [1, 7, 16])
def test_sparse24_int8_split_equals_unsplit(m):
    n, k = (45, 100) if not ON_GPU else (1030, 4100)
    w = P.prune_24(torch.randn(n, k, device=DEV))
    w_q, w_s = P.quantize_int8(w)
    values, meta = P.compress_24(w_q)
    q, a_s = _int8(m, k), torch.rand(m, device=DEV) + 0.5
    bias = torch.randn(n, device=DEV)
    cfg = dict(BLOCK_N=16 if not ON_GPU else 32, BLOCK_K=32 if not ON_GPU else 256, num_warps=4, num_stages=2)
    use_dot = m > 1 or ON_GPU
    run = lambda split, c=None: sparse24_gemv.sparse24_int8_linear(  # noqa: E731
        q, a_s, values, meta, w_s, bias, torch.float32, use_dot=use_dot, config=dict(cfg, SPLIT_K=split), counters=c)
    whole = run(1)
    c = splitk.counters(n, DEV)
    assert_exact(_calls(lambda: run(3, c), c), whole)
    assert_exact(run(3), whole)


@pytest.mark.parametrize("kind,m", [("gemv", 1), ("gemv", 3), ("gemm_small", 5), ("gemm_small", 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else []),
                         ids=str)
def test_w4a16_split_is_deterministic(kind, m, dtype):
    """The W4A16 GEMV and small-M GEMM: split-K output equal to the unsplit one within fp32
    summation-order error, the same bits call after call, the bias added once."""
    n, k, group = (300, 1000, 64) if ON_GPU else (45, 200, 32)
    q = P.quantize_int4(torch.randn(n, k, device=DEV), group, False)
    x = torch.randn(m, k, device=DEV).to(dtype)
    bias = torch.randn(n, device=DEV).to(dtype)
    if kind == "gemv":
        cfg = dict(BLOCK_N=16, BLOCK_K=64, num_warps=4, num_stages=2)
        run = lambda split, c=None: w4a16_gemv.w4a16_gemv(  # noqa: E731
            x, q.packed, q.scales, q.zeros, group, bias, config=dict(cfg, SPLIT_K=split), counters=c)
    else:
        cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1, SWAP_AB=False, num_warps=4, num_stages=2)
        run = lambda split, c=None: w4a16_gemm.w4a16_gemm(  # noqa: E731
            x, q.packed, q.scales, q.zeros, group, bias, small_m=True, config=dict(cfg, SPLIT_K=split), counters=c)
    whole = run(1)
    c = splitk.counters(n, DEV)
    out = _calls(lambda: run(3, c), c)
    assert out.dtype == dtype
    tol = 1e-2 * whole.float().abs().max().item()
    torch.testing.assert_close(out.float(), whole.float(), rtol=1e-2, atol=tol)
    torch.testing.assert_close(run(3).float(), whole.float(), rtol=1e-2, atol=tol)
    if dtype == torch.float32:  # the bias is in the output once, not once a split
        launcher, extra = (w4a16_gemv.w4a16_gemv, {}) if kind == "gemv" else (w4a16_gemm.w4a16_gemm, dict(small_m=True))
        no_bias = launcher(x, q.packed, q.scales, q.zeros, group, None, config=dict(cfg, SPLIT_K=3), **extra)
        torch.testing.assert_close(out - bias, no_bias, rtol=1e-4, atol=1e-4 * tol)


def test_counters_too_small_are_refused():
    a, b = _int8(17, 256), _int8(300, 256)
    s = torch.ones(17, device=DEV), torch.ones(300, device=DEV)
    with pytest.raises(AssertionError, match="split-K counters"):
        int8_gemm.int8_scaled_mm(a, s[0], b, s[1], None, torch.float32, split_k=2, config=TILE,
                                 counters=torch.zeros(3, dtype=torch.int32, device=DEV))


@pytest.mark.parametrize("recipe,buffer", [("int8-weight", "w_q"), ("int8", "w_q"), ("sparse24-int8", "values"),
                                           ("int4", "w_packed")])
def test_layers_keep_counters_per_weight(recipe, buffer):
    """A swapped layer's split-K counters are made by prepare() (swap, .to, load), one set per
    weight, and a forced-Triton split-K call uses them and leaves them at 0."""
    from kernelswap.ops import _prepared

    k, n = (2048, 96) if ON_GPU else (96, 80)  # on the GPU, M = 16 splits K 2 ways (int8_gemm.default_split_k)
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    model = torch.nn.Sequential(torch.nn.Linear(k, n)).to(DEV, dtype).eval()
    ks.swap(model, recipe)
    layer = model[0]
    w = getattr(layer, buffer)
    x = torch.randn(16, k, device=DEV, dtype=dtype)
    # On CPU the interpreter serves only a forced "triton" backend, so prepare() (which asks the
    # backends serving automatically) leaves the counters to that backend's first call.
    assert _prepared._SPLITK.holds((w,)) == ON_GPU, "prepare() made no split-K counters for the layer's weight"
    with ks.ops.use_backend("triton"):
        out = layer(x)
        counters = _prepared.splitk_counters(w)
        again = layer(x)
    assert counters.numel() == splitk.max_tiles(splitk.MAX_M, n)
    assert_exact(again, out)
    assert not counters.any()
    assert _prepared.splitk_counters(w) is counters
