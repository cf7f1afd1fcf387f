"""Triton int8 kernels (W8A8 quant + GEMM, W8A16) against the reference ops.

CPU: under TRITON_INTERPRET=1 (small shapes; fp32/fp16 only: the interpreter rounds
fp32 -> bf16 by truncation and has no bf16 tl.dot). CUDA: the same checks with bf16
and the M values of issue 4. Integer results (q, scales, int32 accumulators) are
exact; the W8A8 epilogue is the reference's own fp32 arithmetic, so its outputs are
checked exact too, and against float64 with the baseline-relative tolerance.
"""
from __future__ import annotations

import pytest
import torch

import kernelswap
from kernelswap.ops.int8 import (int8_linear_ref, int8_scaled_mm_ref, int8_weight_linear_ref, int_matmul_ref,
                                 quantize_per_token_ref)
from utils import assert_close_to_ref, assert_exact, interpreting, needs_cuda

if interpreting():
    DEVICES = ["cpu"]
elif torch.cuda.is_available():
    DEVICES = ["cuda"]
else:
    DEVICES = []
pytestmark = pytest.mark.skipif(not DEVICES, reason="needs TRITON_INTERPRET=1 or a CUDA device")

from kernelswap.kernels import int8_gemm, int8_quant, w8a16_gemm  # noqa: E402

ON_GPU = DEVICES == ["cuda"]
FLOATS = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
M_VALUES = [1, 7, 16, 33, 4096] if ON_GPU else [1, 3, 17]
# (K, N): neither a multiple of any tile; the second has K % 16 == 0 for TMA.
KN = [(100, 70), (208, 45)] if not ON_GPU else [(1000, 300), (1040, 200)]
# Thin explicit tiles: several tiles in M and N and several K steps even on tiny shapes.
SMALL_TILE = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)
DEV = DEVICES[0] if DEVICES else "cpu"
ids = lambda v: {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[v]  # noqa: E731


def _resolve(variant: dict, small_list, large_list, m: int, dtype=None) -> dict:
    """On the GPU, "tuned" variants get the first config of their list instead of a
    tuning run per shape (compile time); the autotuner itself is exercised by the ops
    tests and the benchmark. Under the interpreter the autotuner already collapses to
    that same first config."""
    v = dict(variant)
    if ON_GPU and "config" not in v and dtype == torch.float32:
        # fp32 W8A16 runs an IEEE fp32 dot on CUDA cores: Hopper tensor-core tiles would spill.
        v["config"] = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    elif ON_GPU and "config" not in v:
        c = (small_list if m <= int8_gemm.SMALL_M else large_list)()[0]
        v["config"] = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    return v


def _int8(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8, device=DEV)


# ---------------------------------------------------------------- quantization
def _awkward_rows(m, k, dtype):
    x = torch.randn(m, k, device=DEV).to(dtype) * 3
    if m >= 1:  # exact .5 ties after division: absmax 127 makes scale exactly 1
        x[0, : min(k, 6)] = torch.tensor([127.0, 0.5, 1.5, -2.5, -0.5, 2.5], device=DEV)[: min(k, 6)].to(dtype)
    if m >= 3:
        x[1] = 0
        x[2, k // 2] = float("nan")
    if m >= 5:
        x[3, 0] = float("inf")
        x[4] = 1e-3 * x[4]
    return x


@pytest.mark.parametrize("dtype", FLOATS, ids=ids)
@pytest.mark.parametrize("m,k", [(1, 37), (3, 100), (17, 64), (5, 33000)] + ([(4096, 1000)] if ON_GPU else []))
def test_quantize_exact(m, k, dtype):
    x = _awkward_rows(m, k, dtype)
    q, s = int8_quant.quantize_per_token(x)
    q_ref, s_ref = quantize_per_token_ref(x)
    assert_exact(s, s_ref, "scale")
    assert_exact(q, q_ref, "q")


def test_quantize_op_batched_noncontiguous():
    x = torch.randn(2, 3, 40, device=DEV)[..., ::2]  # (2, 3, 20), column stride 2
    with kernelswap.use_backend("triton"):
        q, s = kernelswap.ops.quantize_per_token_int8(x)
    q_ref, s_ref = quantize_per_token_ref(x.reshape(-1, 20))
    assert_exact(q, q_ref.reshape(2, 3, 20), "q")
    assert_exact(s, s_ref.reshape(2, 3), "scale")


def test_quantize_empty():
    q, s = int8_quant.quantize_per_token(torch.empty(0, 8, device=DEV))
    assert q.shape == (0, 8) and s.shape == (0,)


# ---------------------------------------------------------------- W8A8 GEMM
VARIANTS = {
    "tuned": dict(),
    "tile16": dict(config=SMALL_TILE),
    "splitk3": dict(config=SMALL_TILE, split_k=3),
    "tma": dict(use_tma=True),
    "tma_splitk2": dict(config=SMALL_TILE, use_tma=True, split_k=2),
}


def _variant_shapes(variants: dict) -> list:
    """(variant, k, n) for every legal pair: TMA needs 16-byte rows of int8 (K % 16 == 0)."""
    return [pytest.param(name, k, n, id=f"{name}-{k}x{n}") for name, v in variants.items() for k, n in KN
            if not (v.get("use_tma") and k % 16)]


def _variant(name, k):
    v = dict(VARIANTS[name])
    assert not (v.get("use_tma") and k % 16), "TMA cases need K % 16 == 0"
    return v


@pytest.mark.parametrize("variant,k,n", _variant_shapes(VARIANTS))
@pytest.mark.parametrize("m", M_VALUES)
def test_int8_gemm_accumulates_exactly(m, k, n, variant):
    """Unit scales, no bias, fp32 out: out == the int32 accumulator (|acc| < 2^24)."""
    v = _resolve(_variant(variant, k), int8_gemm.w8a8_small_m_configs, int8_gemm.w8a8_large_m_configs, m)
    a, b = _int8(m, k), _int8(n, k)
    ones_m = torch.ones(m, device=DEV)
    ones_n = torch.ones(n, device=DEV)
    out = int8_gemm.int8_scaled_mm(a, ones_m, b, ones_n, None, torch.float32, **v)
    assert_exact(out, int_matmul_ref(a, b).float(), f"int32 accumulation ({variant})")


@pytest.mark.parametrize("variant", ["tuned", "splitk3", "tma"])
@pytest.mark.parametrize("out_dtype", FLOATS, ids=ids)
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("m", M_VALUES)
def test_int8_scaled_mm_epilogue(m, has_bias, out_dtype, variant):
    k, n = KN[1]
    v = _resolve(_variant(variant, k), int8_gemm.w8a8_small_m_configs, int8_gemm.w8a8_large_m_configs, m)
    a, b = _int8(m, k), _int8(n, k)
    a_s = torch.rand(m, device=DEV) * 1e-2 + 1e-4
    b_s = torch.rand(n, device=DEV) * 1e-2 + 1e-4
    bias = torch.randn(n, device=DEV).to(out_dtype) if has_bias else None
    out = int8_gemm.int8_scaled_mm(a, a_s, b, b_s, bias, out_dtype, **v)
    ref = int8_scaled_mm_ref(a, a_s, b, b_s, bias, out_dtype)
    acc = int_matmul_ref(a, b).double()
    ref64 = acc * a_s.double()[:, None] * b_s.double()[None, :]
    if bias is not None:
        ref64 = ref64 + bias.double()
    assert_close_to_ref(out, ref64, ref, what=f"int8_scaled_mm {variant}")
    assert_exact(out, ref, f"int8_scaled_mm epilogue vs reference ({variant})")


@pytest.mark.parametrize("dtype", FLOATS, ids=ids)
@pytest.mark.parametrize("m", M_VALUES)
def test_int8_linear_op(m, dtype):
    k, n = KN[0]
    x = torch.randn(m, k, device=DEV).to(dtype)
    if m >= 3:
        x[1] = 0  # zero row: scale 0 must give bias, not NaN
    w = _int8(n, k)
    w_s = torch.rand(n, device=DEV) * 1e-2 + 1e-4
    bias = torch.randn(n, device=DEV).to(dtype)
    with kernelswap.use_backend("triton"):
        out = kernelswap.ops.int8_linear(x.reshape(1, m, k), w, w_s, bias).reshape(m, n)
    assert_exact(out, int8_linear_ref(x, w, w_s, bias), "int8_linear vs reference")


@pytest.mark.parametrize("k", [0, 5])
def test_int8_scaled_mm_tiny_k(k):
    a, b = _int8(3, k), _int8(9, k)
    a_s, b_s = torch.rand(3, device=DEV), torch.rand(9, device=DEV)
    bias = torch.randn(9, device=DEV)
    with kernelswap.use_backend("triton"):
        out = kernelswap.ops.int8_scaled_mm(a, a_s, b, b_s, bias, torch.float32)
    assert_exact(out, int8_scaled_mm_ref(a, a_s, b, b_s, bias, torch.float32), f"K={k}")


# ---------------------------------------------------------------- W8A16
W16_VARIANTS = {
    "tuned": dict(),
    "tile16": dict(config=SMALL_TILE, split_k=1),
    "splitk3": dict(config=SMALL_TILE, split_k=3),
    "tma": dict(use_tma=True),
}


@pytest.mark.parametrize("variant,k,n", _variant_shapes(W16_VARIANTS))
@pytest.mark.parametrize("dtype", FLOATS, ids=ids)
@pytest.mark.parametrize("m", M_VALUES)
def test_w8a16(m, k, n, dtype, variant):
    v = _resolve(W16_VARIANTS[variant], w8a16_gemm.w8a16_small_m_configs, w8a16_gemm.w8a16_large_m_configs, m,
                 dtype)
    x = torch.randn(m, k, device=DEV).to(dtype)
    w = _int8(n, k)
    w_s = torch.rand(n, device=DEV) * 1e-2 + 1e-4
    bias = torch.randn(n, device=DEV).to(dtype)
    out = w8a16_gemm.int8_weight_linear(x, w, w_s, bias, **v)
    ref64 = (x.double() @ w.double().t()) * w_s.double() + bias.double()
    # Same-precision PyTorch baseline: dequantize to x.dtype, then F.linear.
    baseline = torch.nn.functional.linear(x, w.to(dtype) * w_s.to(dtype)[:, None], bias)
    assert_close_to_ref(out, ref64, baseline, what=f"w8a16 {variant}")
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", [d for d in FLOATS if not (ON_GPU and d == torch.float32)], ids=ids)
def test_int8_weight_linear_op(dtype):
    m, (k, n) = M_VALUES[1], KN[0]
    x = torch.randn(2, m, k, device=DEV).to(dtype)
    w = _int8(n, k)
    w_s = torch.rand(n, device=DEV) * 1e-2 + 1e-4
    with kernelswap.use_backend("triton"):
        out = kernelswap.ops.int8_weight_linear(x, w, w_s, None)
    ref = int8_weight_linear_ref(x.reshape(-1, k), w, w_s, None).reshape(2, m, n)
    ref64 = ((x.double() @ w.double().t()) * w_s.double())
    baseline = torch.nn.functional.linear(x, w.to(dtype) * w_s.to(dtype)[:, None])
    assert_close_to_ref(out, ref64, baseline, what="int8_weight_linear op")
    # The reference accumulates in fp32 too: both land within one rounding of x.dtype.
    assert_close_to_ref(out, ref64, ref, factor=4.0, what="int8_weight_linear op vs reference")


@needs_cuda
def test_dispatch_picks_triton_on_cuda():
    """Not forced: bf16 int8 calls go to our kernels (Triton, or the CUDA extension when
    built), fp32 W8A16 on the GPU to the torch backend."""
    from kernelswap.ops.backend import choose
    x = torch.randn(16, 256, device="cuda", dtype=torch.bfloat16)
    w = _int8(512, 256)
    s = torch.rand(512, device="cuda")
    assert choose("int8_linear", x.device, x, w, s, None).backend in ("cuda", "triton")
    assert choose("int8_weight_linear", x.device, x, w, s, None).backend in ("cuda", "triton")
    assert choose("int8_weight_linear", x.device, x.float(), w, s, None).backend == "torch"
