"""The FP8 kernels of kernelswap._C (csrc/quantize_per_token.cu, the e4m3 instantiations of
csrc/sm90/gemm_sm90.cuh) and their dispatch (kernelswap.ops.fp8_cuda).

CPU: the _C ops are registered with Meta shapes (where this _C has them); the benchmark's
torch._scaled_mm baseline computes our layer. GPU: the quantizer bit-exact against the
reference (any CUDA GPU); on sm_90 the GEMMs against the float64 product of the same e4m3 codes,
within tests/utils' baseline-relative tolerance (fp32 accumulation in the tensor cores' order is
not bit-exact), the baseline being an fp32 cuBLAS GEMM of the same codes, or the reference op.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import kernelswap as ks
from kernelswap import packing
from kernelswap.nn import Fp8Linear
from kernelswap.ops import backend, fp8_cuda, use_backend
from kernelswap.ops.fp8 import FP8, fp8_linear_ref, quantize_per_token_fp8_ref
from utils import AWKWARD_M, CUTLASS, assert_close_to_ref, assert_exact, needs_cuda, needs_ext, raises_safely

C = torch.ops.kernelswap
HAS_OPS = fp8_cuda.ops_reason() is None
needs_fp8_ops = pytest.mark.skipif(not HAS_OPS, reason="this kernelswap._C predates the FP8 ops (rebuild it)")
ON_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_sm90 = pytest.mark.skipif(not (ON_SM90 and CUTLASS and HAS_OPS),
                                reason="needs an sm_90 GPU and a CUTLASS build with the FP8 ops")
pytestmark = needs_ext

M_SIZES = (1, 16, 33, 4096)
KN = [(16, 16), (208, 80), (8192, 8192)]  # smallest legal, awkward, large
KN_SPARSE = [(32, 16), (224, 80), (8192, 8192)]  # 8-bit 2:4 needs K % 32


# ================================================================ CPU
@needs_fp8_ops
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse24"])
def test_meta_shapes(sparse):
    m, k, n = 33, 64, 80
    x = torch.empty(m, k, device="meta")
    q, s = C._C_quantize_per_token_fp8(x)
    assert q.shape == (m, k) and q.dtype == FP8 and s.shape == (m,) and s.dtype == torch.float32
    w_scale = torch.empty(n, device="meta")
    if sparse:
        # the layouts _C_sparse24_prepare makes for 8-bit weights (tests/test_cuda_ext.py checks them)
        values = torch.empty(n, -(-k // 32) * 16, dtype=FP8, device="meta")
        meta = torch.empty(-(-n // 64) * 64, -(-k // 128) * 16, dtype=torch.uint8, device="meta")
        y = C._C_sparse24_fp8_mm(q, s, values, meta, w_scale, None, torch.bfloat16)
    else:
        y = C._C_fp8_mm(q, s, torch.empty(n, k, dtype=FP8, device="meta"), w_scale, None, torch.bfloat16)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16 and y.device.type == "meta"


@needs_fp8_ops
@raises_safely
def test_entry_points_refuse_what_is_not_instantiated():
    q = torch.empty(4, 32, dtype=FP8, device="meta")
    s, w = torch.empty(4, device="meta"), torch.empty(16, 32, dtype=FP8, device="meta")
    with pytest.raises(RuntimeError, match="out_dtype must be bfloat16"):
        C._C_fp8_mm(q, s, w, torch.empty(16, device="meta"), None, torch.float16)
    with pytest.raises(RuntimeError, match="w must be float8_e4m3fn"):
        C._C_fp8_mm(q, s, w.view(torch.int8), torch.empty(16, device="meta"), None, torch.bfloat16)


def test_scaled_mm_baseline_computes_our_layer_cpu():
    from test_bench_baselines import _check_agreement, _provider_outputs

    from kernelswap.bench import shapes as S
    from kernelswap.bench.providers import Absent
    from kernelswap.bench.providers.fp8 import scaled_mm_rowwise_supported
    outs = _provider_outputs("fp8_linear", S.LinearShape(32, 256, 128), torch.bfloat16, torch.device("cpu"))
    if scaled_mm_rowwise_supported("cpu"):
        assert "scaled_mm-rowwise" in _check_agreement("fp8_linear", outs,
                                                       must_run={"torch-dense", "scaled_mm-rowwise"})
    else:  # torch 2.11's CPU _scaled_mm: per-tensor scales only; the provider says so instead of failing
        assert isinstance(outs["scaled_mm-rowwise"], Absent), outs["scaled_mm-rowwise"]
        assert "no row-wise scales" in str(outs["scaled_mm-rowwise"])
        _check_agreement("fp8_linear", outs, must_run={"torch-dense"})


# ================================================================ GPU: the quantizer (any CUDA GPU)
def _rows(m, k, dtype, offset=0):
    """(m, k) of dtype over 7 decades, an all-zero row and a NaN row; `offset` elements into its
    storage (1: not 16-byte aligned, so the quantizer's scalar path)."""
    base = torch.empty(m * k + offset, device="cuda", dtype=dtype)
    x = base[offset:].view(m, k)
    x.copy_(torch.randn(m, k, device="cuda") * torch.logspace(-4, 3, k, device="cuda"))
    if m >= 3:
        x[1] = 0  # all-zero row: scale 0, codes 0
        x[2, 7] = float("nan")  # NaN reaches the output through the scale
    return x


# K = 1000 and 8192 take the 16-byte vector path for every dtype; K = 37 and offset views the scalar
# one. Each path keeps a row of up to 256, 512, 1024 or 2048 vectors in registers (a thread's 1, 2, 4
# or 8) and reads a longer one twice: with K = 1500, 3000, 14336 and 20000 (vectors of 8 or 4) and
# 300, 2000 and 5000 (scalars) every dtype reaches every count and both forms.
QUANT_CASES = [(1000, 0), (8192, 0), (37, 0), (1000, 1), (1500, 0), (3000, 0), (14336, 0), (20000, 0), (300, 1),
               (2000, 1), (5000, 1)]


@needs_cuda
@needs_fp8_ops
@pytest.mark.parametrize("k,offset", QUANT_CASES, ids=[f"K{k}+{o}" for k, o in QUANT_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m", AWKWARD_M + (4096,))
def test_quantize_per_token_fp8_exact(m, dtype, k, offset):
    x = _rows(m, k, dtype, offset)
    with use_backend("cuda"):
        q, s = ks.ops.quantize_per_token_fp8(x)
    q_ref, s_ref = quantize_per_token_fp8_ref(x)
    assert_exact(s, s_ref, what=f"scale M={m} K={k} {dtype}")
    ok = ~torch.isnan(s_ref)
    assert_exact(q[ok].float(), q_ref[ok].float(), what=f"codes M={m} K={k} {dtype}")


@needs_cuda
@needs_ext
@pytest.mark.parametrize("k,offset", QUANT_CASES, ids=[f"K{k}+{o}" for k, o in QUANT_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_quantize_per_token_int8_exact_on_both_paths(dtype, k, offset):
    """The int8 quantizer shares the kernel body (csrc/quantize_per_token.cu)."""
    from kernelswap.ops.int8 import quantize_per_token_ref

    x = _rows(33, k, dtype, offset)
    q, s = C._C_quantize_per_token_int8(x)
    q_ref, s_ref = quantize_per_token_ref(x)
    ok = ~torch.isnan(s_ref)
    assert_exact(s[ok], s_ref[ok], what=f"int8 scale K={k} {dtype}")
    assert_exact(q[ok], q_ref[ok], what=f"int8 codes K={k} {dtype}")


# ================================================================ GPU: the sm_90a GEMMs
def _codes(m, k, n, dev="cuda"):
    q, s = quantize_per_token_fp8_ref(torch.randn(m, k, device=dev))
    w_q, w_s = packing.quantize_fp8(torch.randn(n, k, device=dev))
    return q, s, w_q, w_s


def _exact_product(q, s, w_q, w_s, bias):
    """float64 (acc * s[m]) * w_s[n] + bias[n] of the codes: the numbers before any rounding."""
    out = (q.double() @ w_q.double().t()) * s.double()[:, None] * w_s.double()[None, :]
    return out if bias is None else out + bias.double()


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("k,n", KN, ids=[f"K{k}N{n}" for k, n in KN])
@pytest.mark.parametrize("m", M_SIZES)
def test_fp8_mm_close(m, k, n):
    q, s, w_q, w_s = _codes(m, k, n)
    bias = torch.randn(n, device="cuda") if m % 2 else None
    out = C._C_fp8_mm(q, s, w_q, w_s, bias, torch.bfloat16)
    # PyTorch at the same precision: an fp32 GEMM of the codes (cuBLAS, TF32 off), the epilogue, bf16
    acc = q.float() @ w_q.float().t()
    baseline = (acc * s[:, None] * w_s[None, :] + (0 if bias is None else bias)).bfloat16()
    assert_close_to_ref(out, _exact_product(q, s, w_q, w_s, bias), baseline, what=f"_C_fp8_mm m={m} k={k} n={n}")


def _sparse_codes(n, k, dev="cuda"):
    w_q, w_s = packing.quantize_fp8(packing.prune_24(torch.randn(n, k, device=dev)))
    values, meta = packing.compress_24(w_q.float())
    return w_q, values.to(FP8), meta, w_s


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("k,n", KN_SPARSE, ids=[f"K{k}N{n}" for k, n in KN_SPARSE])
@pytest.mark.parametrize("m", M_SIZES)
def test_sparse24_fp8_linear_close(m, k, n):
    w_q, values, meta, w_s = _sparse_codes(n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if m % 2 else None
    with use_backend("cuda"):
        out = ks.ops.sparse24_fp8_linear(x, values, meta, w_s, bias)
    q, s = quantize_per_token_fp8_ref(x)
    baseline = fp8_linear_ref(x, w_q, w_s, bias)  # the dense reference: exact sums, rounded once to bf16
    assert_close_to_ref(out, _exact_product(q, s, w_q, w_s, bias), baseline,
                        what=f"sparse24_fp8_linear m={m} k={k} n={n}")


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("m", (0, 1, 17, 4096))
def test_fp8_linear_cuda_close(m):
    k, n = 1024, 528
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_q, w_s = packing.quantize_fp8(torch.randn(n, k, device="cuda"))
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    with use_backend("cuda"):
        out = ks.ops.fp8_linear(x, w_q, w_s, bias)
    q, s = quantize_per_token_fp8_ref(x)
    assert_close_to_ref(out, _exact_product(q, s, w_q, w_s, bias), fp8_linear_ref(x, w_q, w_s, bias),
                        what=f"fp8_linear m={m}")


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("m,k", [(17, 4096), (65, 528), (300, 4096), (1024, 8192)])
def test_fp8_linear_fast_accum(m, k):
    # Fast accumulation (Tiles::kLargeFastAccum) from M = 65: the tensor cores' own accumulator over
    # all of K, so it is not held to the fp32 baseline's bound, only to 1% of the exact product's
    # norm, and its error must not be below the promoted kernel's by chance of a wrong kernel (at M
    # <= 64 the promoted kernel serves: the same bits).
    n = 528
    torch.manual_seed(m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_q, w_s = packing.quantize_fp8(torch.randn(n, k, device="cuda"))
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    with use_backend("cuda"):
        fast = ks.ops.fp8_linear(x, w_q, w_s, bias, True)
        slow = ks.ops.fp8_linear(x, w_q, w_s, bias)
    q, s = quantize_per_token_fp8_ref(x)
    exact = _exact_product(q, s, w_q, w_s, bias)
    err = ((fast.double() - exact).norm() / exact.norm()).item()
    err_slow = ((slow.double() - exact).norm() / exact.norm()).item()
    print(f"fast_accum m={m} k={k}: relative error {err:.3e}, promoted {err_slow:.3e}")
    if m <= 64:
        assert_exact(fast, slow, what=f"fast_accum at M={m} (the promoted kernel serves)")
    else:
        assert err <= 1e-2, f"fast_accum m={m} k={k}: relative error {err:.3e} > 1e-2 (promoted: {err_slow:.3e})"
        assert not torch.equal(fast, slow) or k <= 528, f"m={m} k={k}: fast_accum gave the promoted kernel's bits"


@needs_cuda
@needs_sm90
def test_sparse24_fp8_prepared_once_per_weight():
    _, values, meta, w_s = _sparse_codes(64, 128)
    x = torch.randn(5, 128, device="cuda", dtype=torch.bfloat16)
    with use_backend("cuda"):
        ks.ops.sparse24_fp8_linear(x, values, meta, w_s, None)
        before = len(fp8_cuda._SPARSE)
        ks.ops.sparse24_fp8_linear(x, values, meta, w_s, None)
        assert len(fp8_cuda._SPARSE) == before


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("recipe", ["fp8", "sparse24-fp8"])
def test_swapped_bf16_model_runs_the_gemms(recipe):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 128)).eval().cuda().bfloat16()
    x = torch.randn(4, 9, 256, device="cuda", dtype=torch.bfloat16)
    ks.swap(model, recipe, probe=False)
    with torch.no_grad():
        y = model(x)
        layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
        assert [m.served_by() for m in layers] == ["cuda", "cuda"]
        with use_backend("reference"):
            ref = model(x)
    assert (y.float() - ref.float()).norm() <= 1e-2 * ref.float().norm()


@needs_cuda
@needs_sm90
def test_fp16_layers_fall_back_with_the_reason():
    x = torch.randn(3, 64, device="cuda", dtype=torch.float16)
    w_q, w_s = packing.quantize_fp8(torch.randn(32, 64, device="cuda"))
    assert "bfloat16 only" in fp8_cuda._fp8_linear_supports(x, w_q, w_s, None)
    assert backend.choose("fp8_linear", x.device, x, w_q, w_s, None).backend == "reference"


@needs_cuda
def test_every_fp8_baseline_runs_and_agrees_on_gpu():
    from test_bench_baselines import _check_agreement, _provider_outputs

    from kernelswap.bench import shapes as S
    from kernelswap.bench.providers import Absent
    from kernelswap.bench.providers.fp8 import scaled_mm_rowwise_supported
    outs = _provider_outputs("fp8_linear", S.LinearShape(64, 1024, 512), torch.bfloat16, torch.device("cuda"))
    if scaled_mm_rowwise_supported("cuda"):
        assert "scaled_mm-rowwise" in _check_agreement("fp8_linear", outs,
                                                       must_run={"torch-dense", "scaled_mm-rowwise"})
    else:  # a GPU before sm_89 / sm_90: the baseline says it is absent, the dense one still agrees
        assert isinstance(outs["scaled_mm-rowwise"], Absent), outs["scaled_mm-rowwise"]
        _check_agreement("fp8_linear", outs, must_run={"torch-dense"})


@needs_cuda
@pytest.mark.skipif(ON_SM90 and CUTLASS and HAS_OPS, reason="this GPU and build run the FP8 GEMMs")
def test_other_gpus_and_builds_fall_back_with_the_reason():
    x = torch.randn(3, 64, device="cuda", dtype=torch.bfloat16)
    w_q, w_s = packing.quantize_fp8(torch.randn(32, 64, device="cuda"))
    why = fp8_cuda._fp8_linear_supports(x, w_q, w_s, None)
    assert why, "a GPU or build without the FP8 GEMMs must decline with a reason"
    assert backend.choose("fp8_linear", x.device, x, w_q, w_s, None).backend == "reference"
    assert_exact(ks.ops.fp8_linear(x, w_q, w_s, None), fp8_linear_ref(x, w_q, w_s, None), what="fallback")
