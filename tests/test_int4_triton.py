"""W4A16 Triton kernels (kernels/w4a16_gemv.py, kernels/w4a16_gemm.py) and their dispatch.

CPU: the launchers under TRITON_INTERPRET=1 on small awkward shapes (fp16 / fp32; the
interpreter cannot do bf16 tl.dot). CUDA: bf16 / fp16, M in {1, 7, 16, 33, 4096}, and
every autotune config of every tuning. Each result is judged against a float64
computation, within 2x the error of PyTorch's own same-precision path (dequantize to
x.dtype, F.linear).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernelswap.ops import int4_triton, use_backend
from kernelswap.ops.backend import choose
from kernelswap.ops.int4 import dequantize_int4_ref
from kernelswap.packing import quantize_int4

from utils import assert_close_to_ref, interpreting, needs_cuda, non_contiguous

needs_interpreter = pytest.mark.skipif(not interpreting(), reason="CPU runs of Triton kernels need TRITON_INTERPRET=1")


def _problem(m, k, n, group, symmetric, dtype, device, with_bias=True):
    w = torch.randn(n, k, device=device)
    w[0] = 0.0  # a row of zeros: scale must not turn into NaN
    q = quantize_int4(w, group, symmetric)
    x = torch.randn(m, k, device=device).to(dtype)
    bias = torch.randn(n, device=device).to(dtype) if with_bias else None
    w32 = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)[:, :k]
    ref64 = x.double() @ w32.double().t() + (0 if bias is None else bias.double())
    baseline = F.linear(x, w32.to(dtype), bias)
    return x, q, bias, ref64, baseline


def _run(kind, x, q, bias, config=None):
    from kernelswap.kernels.w4a16_gemm import w4a16_gemm
    from kernelswap.kernels.w4a16_gemv import w4a16_gemv

    if kind == "gemv":
        return w4a16_gemv(x, q.packed, q.scales, q.zeros, q.group_size, bias, config=config)
    return w4a16_gemm(x, q.packed, q.scales, q.zeros, q.group_size, bias, small_m=kind == "gemm_small",
                      config=config)


def _gemv(bn, bk, split_k):
    return dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k, num_warps=4, num_stages=2)


def _gemm(bm, bn, bk, split_k=1, swap=False):
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2, SPLIT_K=split_k, SWAP_AB=swap,
                num_warps=4, num_stages=2)


# (kind, config, (m, k, n, group, symmetric)): K never a multiple of the group, N never
# a multiple of the tile; configs cover split-K, a tile wider than the group (several
# groups a tile) and narrower (several tiles a group), and swap-AB.
CPU_CASES = [
    ("gemv", _gemv(16, 128, 1), (1, 100, 37, 32, False)),
    ("gemv", _gemv(16, 256, 2), (3, 200, 45, 64, True)),
    ("gemv", _gemv(32, 128, 3), (4, 300, 20, 128, False)),
    ("gemm_small", _gemm(16, 32, 64, split_k=1), (5, 100, 37, 32, True)),
    ("gemm_small", _gemm(16, 32, 32, split_k=3), (16, 200, 45, 128, False)),
    ("gemm_small", _gemm(16, 16, 128, split_k=2), (7, 129, 20, 64, False)),
    ("gemm_large", _gemm(32, 32, 32), (33, 100, 37, 32, False)),
    ("gemm_large", _gemm(16, 32, 64, swap=True), (17, 200, 45, 32, True)),
    ("gemm_large", _gemm(32, 16, 128, swap=True), (40, 129, 20, 128, False)),
]


def _case_id(case):
    kind, c, (m, k, n, g, sym) = case
    tile = "x".join(str(c[key]) for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if key in c)
    return f"{kind}-{tile}-sk{c['SPLIT_K']}{'-swap' if c.get('SWAP_AB') else ''}-{m}x{k}x{n}-g{g}-{'sym' if sym else 'asym'}"


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CPU_CASES, ids=_case_id)
def test_launchers_interpreted(case, dtype):
    kind, config, (m, k, n, group, symmetric) = case
    x, q, bias, ref64, baseline = _problem(m, k, n, group, symmetric, dtype, "cpu", with_bias=kind != "gemm_large")
    out = _run(kind, x, q, bias, config)
    assert out.dtype == dtype
    assert_close_to_ref(out, ref64, baseline, what=_case_id(case))


@needs_interpreter
def test_op_interpreted_batch_dims_noncontiguous_and_empty():
    k, n, group = 100, 24, 32
    w = torch.randn(n, k)
    q = quantize_int4(w, group)
    w32 = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)[:, :k]
    with use_backend("triton"):
        for shape in [(2, 3, k), (0, k), (5, 0, k)]:
            x = torch.randn(*shape).half()
            out = torch.ops.kernelswap.int4_linear(x, q.packed, q.scales, q.zeros, group, None)
            assert out.shape == (*shape[:-1], n)
            assert_close_to_ref(out, x.double() @ w32.double().t(), F.linear(x, w32.half()), what=f"x {shape}")
        x = non_contiguous(torch.randn(6, k).half())
        out = torch.ops.kernelswap.int4_linear(x, q.packed, q.scales, None if q.zeros is None else q.zeros,
                                               group, None)
        assert_close_to_ref(out, x.double() @ w32.double().t(), F.linear(x, w32.half()), what="non-contiguous x")


@needs_interpreter
@pytest.mark.parametrize("m", [2, 9, 20], ids=lambda m: f"M{m}")
def test_nan_stays_in_its_row(m):
    x, q, bias, ref64, _ = _problem(m, 70, 19, 32, False, torch.float32, "cpu")
    x[1, 5] = float("nan")
    with use_backend("triton"):
        out = torch.ops.kernelswap.int4_linear(x, q.packed, q.scales, q.zeros, 32, bias)
    assert torch.isnan(out[1]).all(), "a NaN input must poison its whole output row"
    rows = [i for i in range(m) if i != 1]
    assert torch.isfinite(out[rows]).all(), "a NaN must not leak into other rows"


@needs_interpreter
def test_dispatch_serves_every_m_from_triton_when_forced():
    q = quantize_int4(torch.randn(8, 64), 32)
    for m, kind in [(1, "gemv"), (4, "gemv"), (5, "gemm_small"), (16, "gemm_small"), (17, "gemm_large")]:
        assert int4_triton.pick_kernel(m) == kind
        with use_backend("triton"):
            impl = choose("int4_linear", torch.device("cpu"), torch.randn(m, 64), q.packed, q.scales, q.zeros, 32,
                          None)
        assert impl.backend == "triton"


def test_supports_sends_fp32_gemm_to_cublas_on_cuda():
    class FakeCuda:  # what _supports reads of x, on a "cuda" device, with no GPU needed
        def __init__(self, m, dtype):
            self.shape, self.dtype, self.device = (m, 64), dtype, torch.device("cuda")

    args = (None, None, None, 32, None)
    assert int4_triton._supports(FakeCuda(1, torch.float32), *args) is None  # the GEMV does fp32 natively
    assert "fp32" in int4_triton._supports(FakeCuda(33, torch.float32), *args)
    assert int4_triton._supports(FakeCuda(33, torch.bfloat16), *args) is None


# ------------------------------------------------------------------------------ CUDA
GPU_SHAPES = [(1000, 300, 128, False), (520, 129, 32, True)]  # (K, N, group, symmetric): K, N not tile multiples
# One fixed config per kind keeps the compile count down; every config is checked below.
GPU_CONFIGS = {"gemv": _gemv(32, 256, 2), "gemm_small": _gemm(16, 64, 128, split_k=2),
               "gemm_large": _gemm(128, 128, 64)}


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m", [1, 7, 16, 33, 4096], ids=lambda m: f"M{m}")
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"K{s[0]}-N{s[1]}-g{s[2]}-{'sym' if s[3] else 'asym'}")
def test_launchers_cuda(shape, m, dtype):
    k, n, group, symmetric = shape
    kind = int4_triton.pick_kernel(m)
    x, q, bias, ref64, baseline = _problem(m, k, n, group, symmetric, dtype, "cuda")
    out = _run(kind, x, q, bias, GPU_CONFIGS[kind])
    assert_close_to_ref(out, ref64, baseline, what=f"{kind} M={m} {shape} {dtype}")


def _configs(kind):
    from kernelswap.kernels.w4a16_gemm import large_m_configs, small_m_configs
    from kernelswap.kernels.w4a16_gemv import gemv_configs

    configs = {"gemv": gemv_configs, "gemm_small": small_m_configs, "gemm_large": large_m_configs}[kind]()
    return [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages} for c in configs]


# K and N multiples of 16 and M of the benchmark's kind (1, 4, multiples of 16), so
# Triton specializes these compilations exactly as in benchmarks/int4_triton_quick.py.
@needs_cuda
@pytest.mark.parametrize("kind,m", [("gemv", 1), ("gemv", 4), ("gemm_small", 16), ("gemm_large", 256)],
                         ids=lambda v: str(v))
def test_every_autotune_config_cuda(kind, m):
    """Whatever the autotuner picks must be right: each config once, bf16, g128 asymmetric."""
    x, q, _, ref64, baseline = _problem(m, 2048, 512, 128, False, torch.bfloat16, "cuda", with_bias=False)
    for config in _configs(kind):
        out = _run(kind, x, q, None, config)
        assert_close_to_ref(out, ref64, baseline, what=f"{kind} M={m} {config}")


@needs_cuda
@pytest.mark.parametrize("m", [1, 16, 256, 0], ids=lambda m: f"M{m}")
def test_op_autotuned_cuda(m):
    x, q, _, ref64, baseline = _problem(m, 2048, 512, 128, False, torch.bfloat16, "cuda", with_bias=False)
    with use_backend("triton"):
        out = torch.ops.kernelswap.int4_linear(x, q.packed, q.scales, q.zeros, 128, None)
    assert_close_to_ref(out, ref64, baseline, what=f"op M={m}")
