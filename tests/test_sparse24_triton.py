"""Triton 2:4 sparse small-M kernels (kernels/sparse24_gemv.py) against the reference ops.

CPU: the launchers under TRITON_INTERPRET=1 on small awkward shapes (fp16 and fp32: the
interpreter rounds bf16 toward zero and cannot run a bf16 tl.dot). CUDA: bf16 / fp16,
M in {1, 7, 16, 33}, fixed configs (split-K included) and the autotuned op.
Float paths: error vs float64 within 2x PyTorch's own error at the same precision
(F.linear on the decompressed weight). Int8 paths: bit-exact against the reference op.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernelswap as ks
from kernelswap import packing as P
from kernelswap.ops import sparse24_triton
from kernelswap.ops.backend import choose, use_backend
from kernelswap.ops.int8 import quantize_per_token_ref
from kernelswap.ops.sparse24 import sparse24_int8_linear_ref

from utils import assert_close_to_ref, assert_exact, interpreting, needs_cuda

KERNEL_DEVICES = (["cpu"] if interpreting() else []) + (["cuda"] if torch.cuda.is_available() else [])
# (M, N, K): K not a multiple of 8 (and of 4), N not a multiple of any tile.
CPU_SHAPES = [(1, 37, 70), (3, 20, 131), (17, 45, 100)]
CUDA_SHAPES = [(1, 300, 1001), (7, 300, 1001), (16, 520, 2050), (33, 300, 1001)]
# Small tiles so tiny shapes still span several CTAs along N and K, with and without split-K.
CPU_CONFIGS = {
    "n16k32": dict(BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, num_warps=1, num_stages=1),
    "n16k32s3": dict(BLOCK_N=16, BLOCK_K=32, SPLIT_K=3, num_warps=1, num_stages=1),
}
CUDA_CONFIGS = {
    "n64k128": dict(BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, num_warps=4, num_stages=3),
    "n32k256s3": dict(BLOCK_N=32, BLOCK_K=256, SPLIT_K=3, num_warps=4, num_stages=3),
}


def _configs(device):
    return CPU_CONFIGS if device == "cpu" else CUDA_CONFIGS


def _shapes(device):
    return CPU_SHAPES if device == "cpu" else CUDA_SHAPES


def _dtypes(device):
    return [torch.float16, torch.float32] if device == "cpu" else [torch.bfloat16, torch.float16]


def _float_case(m, n, k, dtype, device, bias=True):
    w = P.prune_24(torch.randn(n, k, device=device) / k**0.5).to(dtype)
    values, meta = P.compress_24(w)
    x = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if bias else None
    return x, w, values, meta, b


def _check_float(out, x, w, b, what):
    ref64 = x.double() @ w.double().t() + (0 if b is None else b.double())
    base = F.linear(x, w, b)  # PyTorch at the same precision, on the same device
    assert out.dtype == x.dtype, what
    assert_close_to_ref(out, ref64, base, factor=2.0, floor=1e-6, what=what)


def _cases(kind):
    """(device, dtype, shape, mode, config name) for every device this machine can test.

    CUDA-core (fma) mode serves M <= 4 only. On CUDA every case is a fresh compile, so the
    two configs alternate over the shapes instead of multiplying them (M = 1 gets both)."""
    out = []
    for device in KERNEL_DEVICES:
        dtypes = _dtypes(device) if kind == "float" else [torch.float16 if device == "cpu" else torch.bfloat16]
        names = list(_configs(device))
        for dtype in dtypes:
            for i, shape in enumerate(_shapes(device)):
                for use_dot in (False, True):
                    if not use_dot and shape[0] > 4:
                        continue
                    cfgs = names if device == "cpu" or shape[0] == 1 else [names[i % len(names)]]
                    for cfg in cfgs:
                        out.append(pytest.param(device, dtype, shape, use_dot, cfg,
                                                id=f"{device}-{str(dtype)[6:]}-{'x'.join(map(str, shape))}-"
                                                   f"{'dot' if use_dot else 'fma'}-{cfg}"))
    return out


@pytest.mark.parametrize("device,dtype,shape,use_dot,cfg", _cases("float"))
def test_linear_launcher(device, dtype, shape, use_dot, cfg):
    from kernelswap.kernels.sparse24_gemv import sparse24_linear

    x, w, values, meta, b = _float_case(*shape, dtype, device)
    out = sparse24_linear(x, values, meta, b, use_dot=use_dot, config=_configs(device)[cfg])
    _check_float(out, x, w, b, f"{shape} {dtype} use_dot={use_dot} {cfg}")


@pytest.mark.parametrize("device,dtype,shape,use_dot,cfg", _cases("int8"))
def test_int8_launcher_exact(device, dtype, shape, use_dot, cfg):
    from kernelswap.kernels.sparse24_gemv import sparse24_int8_linear

    m, n, k = shape
    w_q, w_scale = P.quantize_int8(P.prune_24(torch.randn(n, k, device=device)))
    values, meta = P.compress_24(w_q)
    x = torch.randn(m, k, device=device).to(dtype)
    x[0, : k // 3] = 0.0  # a zero-heavy row next to dense ones
    bias = torch.randn(n, device=device)
    q, a_scale = quantize_per_token_ref(x)
    out = sparse24_int8_linear(q, a_scale, values, meta, w_scale, bias, dtype, use_dot=use_dot,
                               config=_configs(device)[cfg])
    ref = sparse24_int8_linear_ref(x, values, meta, w_scale, bias)
    assert_exact(out, ref, what=f"{shape} use_dot={use_dot} {cfg}")


# ---------------------------------------------------------------- through the ops (autotuned)
# CUDA: autotuning compiles every config, so two bias-free bf16 cases at the benchmark's
# 16x4096x14336 shape family (the benchmark then reuses the compiled kernels).
OP_CASES = ([pytest.param("cpu", dt, shape, bias, id=f"cpu-{str(dt)[6:]}-{'x'.join(map(str, shape))}-b{int(bias)}")
             for dt in _dtypes("cpu") for shape in CPU_SHAPES for bias in (False, True)] if interpreting() else [])
OP_CASES += ([pytest.param("cuda", torch.bfloat16, (m, 14336, 4096), False, id=f"cuda-bfloat16-{m}x14336x4096")
              for m in (1, 16)] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device,dtype,shape,bias", OP_CASES)
def test_op_float(device, dtype, shape, bias):
    m, n, k = shape
    x, w, values, meta, b = _float_case(m, n, k, dtype, device, bias)
    x3 = x.reshape(1, m, k)  # leading batch dims
    with use_backend("triton"):  # raises instead of falling back: the kernel must serve it
        out = ks.ops.sparse24_linear(x3, values, meta, b)
    _check_float(out.reshape(m, n), x, w, b, f"op {m}x{n}x{k} {dtype}")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_op_int8_exact(device):
    shapes = CPU_SHAPES if device == "cpu" else [(16, 14336, 4096)]
    dtype = torch.float16 if device == "cpu" else torch.bfloat16
    for m, n, k in shapes:
        w_q, w_scale = P.quantize_int8(P.prune_24(torch.randn(n, k, device=device)))
        values, meta = P.compress_24(w_q)
        x = torch.randn(1, m, k, device=device).to(dtype)
        with use_backend("triton"):
            out = ks.ops.sparse24_int8_linear(x, values, meta, w_scale, None)
        ref = sparse24_int8_linear_ref(x.reshape(-1, k), values, meta, w_scale, None).reshape(1, m, n)
        assert_exact(out, ref, what=f"op int8 {m}x{n}x{k}")


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_edges(device):
    """M = 0 through the ops; K < 8 (one padded group), K == Kp and a row stride wider than K
    through the launchers."""
    from kernelswap.kernels.sparse24_gemv import sparse24_int8_linear, sparse24_linear

    dtype = torch.float16
    cfg = next(iter(_configs(device).values()))
    x, w, values, meta, b = _float_case(0, 9, 16, dtype, device)
    with use_backend("triton"):
        assert ks.ops.sparse24_linear(x, values, meta, b).shape == (0, 9)
        assert ks.ops.sparse24_int8_linear(x, *P.compress_24(P.quantize_int8(w.float())[0]),
                                           torch.ones(9, device=device), None).shape == (0, 9)
    for m, n, k in [(2, 9, 5), (2, 9, 16)]:
        x, w, values, meta, b = _float_case(m, n, k, dtype, device)
        wide = torch.zeros(m, k + 7, device=device, dtype=dtype)
        wide[:, :k] = x
        out = sparse24_linear(wide[:, :k], values, meta, b, use_dot=True, config=cfg)
        _check_float(out, x, w, b, f"edge {m}x{n}x{k}")
        w_q, w_scale = P.quantize_int8(w.float())
        q, a_scale = quantize_per_token_ref(x)
        out8 = sparse24_int8_linear(q, a_scale, *P.compress_24(w_q), w_scale, b, dtype, use_dot=False, config=cfg)
        assert_exact(out8, sparse24_int8_linear_ref(x, *P.compress_24(w_q), w_scale, b), what=f"edge int8 {k}")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("use_dot", [False, True], ids=["fma", "dot"])
def test_nan_inf_rows(device, use_dot):
    """A NaN or Inf in a row of x poisons that row (as in the dense product), nothing else."""
    from kernelswap.kernels.sparse24_gemv import sparse24_linear

    x, w, values, meta, b = _float_case(3, 21, 40, torch.float16, device)
    x[0, 5] = float("nan")
    x[2, 33] = float("inf")
    out = sparse24_linear(x, values, meta, b, use_dot=use_dot, config=next(iter(_configs(device).values())))
    ref = x.float() @ w.float().t() + b.float()
    assert out[0].isnan().all() and out[2].isnan().any() and not out[2].isfinite().any()
    assert ref[2].isnan().any()  # the pruned zeros meet the Inf
    assert out[1].isfinite().all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_bad_meta_raises(device):
    x, w, values, meta, b = _float_case(2, 8, 16, torch.float16, device)
    meta = meta.clone()
    meta[3, 1] = 0x55  # both nibbles name position 1 twice
    with use_backend("triton"), pytest.raises(ValueError, match="meta is not 2:4 metadata"):
        ks.ops.sparse24_linear(x, values, meta, b)


def test_supports_reasons():
    big = torch.empty(sparse24_triton.MAX_M + 1, 16, dtype=torch.float16)
    v, meta = torch.empty(8, 8, dtype=torch.float16), torch.empty(8, 2, dtype=torch.uint8)
    assert "tokens" in sparse24_triton._float_supports(big, v, meta, None)
    assert "tokens" in sparse24_triton._int8_supports(big, v.to(torch.int8), meta, None, None)
    small = big[:4]
    assert "dtype" in sparse24_triton._float_supports(small.float(), v, meta, None)


@needs_cuda
def test_dispatch_prefers_triton_for_small_m_on_cuda():
    x, w, values, meta, b = _float_case(16, 64, 128, torch.bfloat16, "cuda")
    assert choose("sparse24_linear", x.device, x, values, meta, b).backend in ("cuda", "triton")
    big = torch.randn(sparse24_triton.MAX_M + 1, 128, device="cuda", dtype=torch.bfloat16)
    assert choose("sparse24_linear", big.device, big, values, meta, b).backend != "triton"
