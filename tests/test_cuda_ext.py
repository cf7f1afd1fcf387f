"""The CUDA extension's sm_90a GEMMs (csrc/sm90, csrc/sm90_gemm_ops.cu, csrc/sparse24_prepare.cu).

CPU: the extension loads, its ops are registered, Meta shapes are right, bad inputs
raise the documented errors, and the `supports` predicates give their reasons.
GPU (sm_90): each kernel against the reference ops; int8 paths bit-exact, float paths
within tests/utils' baseline-relative tolerance.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernelswap import _ext, packing
from kernelswap.ops import gemv_cuda, int8_cuda, sparse24_cuda, use_backend
from kernelswap.ops.int8 import int8_linear_ref, int8_scaled_mm_ref
from kernelswap.ops.sparse24 import sparse24_int8_linear_ref
from utils import (assert_close_to_ref, assert_exact, needs_cuda, needs_cutlass, needs_ext, needs_sm90_cutlass,
                   raises_safely)

pytestmark = needs_ext
C = torch.ops.kernelswap
needs_sm90 = needs_sm90_cutlass

OPS = ("_C_build_info", "_C_quantize_per_token_int8", "_C_int8_mm", "_C_sparse24_prepare", "_C_sparse24_mm",
       "_C_sparse24_int8_mm")


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


# ================================================================ CPU
def test_ops_registered():
    missing = [name for name in OPS if not hasattr(C, name)]
    assert not missing, f"not registered in torch.ops.kernelswap: {missing}"


def test_build_info_names_archs():
    info = _ext.build_info()
    assert info.get("archs"), info
    assert info.get("cutlass") in ("0", "1"), info
    assert info.get("torch", "").count(".") == 1, info  # the torch headers it was built against


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_int8_mm_meta_shape(out_dtype, bias):
    m, k, n = 33, 48, 80
    x = torch.empty(m, k, dtype=torch.int8, device="meta")
    w = torch.empty(n, k, dtype=torch.int8, device="meta")
    b = torch.empty(n, device="meta") if bias else None
    y = C._C_int8_mm(x, torch.empty(m, device="meta"), w, torch.empty(n, device="meta"), b, out_dtype)
    assert y.shape == (m, n) and y.dtype == out_dtype and y.device.type == "meta"


@needs_cutlass
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int8], ids=str)
@pytest.mark.parametrize("n,k", [(16, 32), (80, 224), (4096, 8192)])
def test_sparse24_prepare_meta_shapes(dtype, n, k):
    # The layout the GEMM entry points check (csrc/sm90_gemm_ops.cu check_sparse) must be
    # the one CUTLASS's compressor utility computes.
    values, meta = C._C_sparse24_prepare(torch.empty(n, k, dtype=dtype, device="meta"))
    k_a = _round_up(k, 32 if dtype == torch.int8 else 16)
    assert values.shape == (n, k_a // 2) and values.dtype == dtype
    assert meta.shape == (_round_up(n, 64), _round_up(k, 128) // 8) and meta.dtype == torch.uint8
    x = torch.empty(5, k, dtype=dtype, device="meta")
    if dtype == torch.int8:
        y = C._C_sparse24_int8_mm(x, torch.empty(5, device="meta"), values, meta, torch.empty(n, device="meta"),
                                  None, torch.float16)
        assert y.shape == (5, n) and y.dtype == torch.float16
    else:
        y = C._C_sparse24_mm(x, values, meta, torch.empty(n, device="meta"))
        assert y.shape == (5, n) and y.dtype == dtype


def _meta_int8_args(m=4, k=32, n=32, **over):
    args = dict(x=torch.empty(m, k, dtype=torch.int8, device="meta"), x_scale=torch.empty(m, device="meta"),
                w=torch.empty(n, k, dtype=torch.int8, device="meta"), w_scale=torch.empty(n, device="meta"),
                bias=None, out_dtype=torch.bfloat16)
    args.update(over)
    return args


@pytest.mark.parametrize("over,match", [
    (dict(x=torch.empty(4, 24, dtype=torch.int8, device="meta"),
          w=torch.empty(32, 24, dtype=torch.int8, device="meta")), "K must be a positive multiple of 16"),
    (dict(w=torch.empty(24, 32, dtype=torch.int8, device="meta"), w_scale=torch.empty(24, device="meta")),
     "N must be a positive multiple of 16"),
    (dict(w=torch.empty(32, 48, dtype=torch.int8, device="meta")), "K must match|but w is"),
    (dict(x=torch.empty(4, 32, dtype=torch.float16, device="meta")), "x must be int8"),
    (dict(out_dtype=torch.float32), "out_dtype must be bfloat16 or float16"),
    (dict(w_scale=torch.empty(16, device="meta")), "w_scale must have 32 elements"),
    (dict(bias=torch.empty(32, dtype=torch.float16, device="meta")), "bias must be float32"),
    (dict(x=torch.empty(32, 4, dtype=torch.int8, device="meta").t()), "x must be contiguous"),
], ids=["k", "n", "k-mismatch", "x-dtype", "out-dtype", "w_scale-shape", "bias-dtype", "non-contiguous"])
@raises_safely
def test_int8_mm_errors(over, match):
    with pytest.raises(RuntimeError, match=match):
        C._C_int8_mm(**_meta_int8_args(**over))


@needs_cutlass
@raises_safely
def test_sparse24_errors():
    dev = "meta"
    values, meta = C._C_sparse24_prepare(torch.empty(64, 64, dtype=torch.bfloat16, device=dev))
    x = torch.empty(3, 64, dtype=torch.bfloat16, device=dev)
    with pytest.raises(RuntimeError, match="x must be bfloat16 or float16"):
        C._C_sparse24_mm(x.float(), values, meta, None)
    with pytest.raises(RuntimeError, match="values must be float16"):
        C._C_sparse24_mm(x.half(), values, meta, None)
    with pytest.raises(RuntimeError, match="values has 32 columns; K=128"):
        C._C_sparse24_mm(torch.empty(3, 128, dtype=torch.bfloat16, device=dev), values, meta, None)
    with pytest.raises(RuntimeError, match="meta is"):
        C._C_sparse24_mm(x, values, meta[:, :4].contiguous(), None)
    with pytest.raises(RuntimeError, match="N and K must be multiples of 16"):
        C._C_sparse24_prepare(torch.empty(64, 40, dtype=torch.bfloat16, device=dev))
    with pytest.raises(RuntimeError, match="w must be bfloat16, float16 or int8"):
        C._C_sparse24_prepare(torch.empty(64, 64, dtype=torch.float32, device=dev))
    with pytest.raises(RuntimeError, match="int8 weights need K to be a multiple of 32"):
        C._C_sparse24_prepare(torch.empty(64, 48, dtype=torch.int8, device=dev))
    v8, m8 = C._C_sparse24_prepare(torch.empty(64, 64, dtype=torch.int8, device=dev))
    with pytest.raises(RuntimeError, match="8-bit 2:4 needs K to be a multiple of 32"):
        C._C_sparse24_int8_mm(torch.empty(3, 48, dtype=torch.int8, device=dev), torch.empty(3, device=dev),
                              v8, m8, torch.empty(64, device=dev), None, torch.bfloat16)


def test_supports_reasons_without_gpu():
    x = torch.randn(4, 24, dtype=torch.bfloat16)
    w = torch.zeros(32, 24, dtype=torch.int8)
    s = torch.ones(32)
    assert "multiples of 16" in int8_cuda._int8_linear_supports(x, w, s, None)
    assert "not instantiated" in int8_cuda._int8_linear_supports(x.float(), w, s, None)
    assert "not instantiated" in int8_cuda._scaled_mm_supports(w[:4], s[:4], w, s, None, torch.float32)
    values, meta = packing.compress_24(packing.prune_24(torch.randn(32, 32)).to(torch.bfloat16))
    assert "bfloat16 / float16" in sparse24_cuda._sparse24_supports(torch.randn(4, 32), values.float(), meta, None)
    assert "values are" in sparse24_cuda._sparse24_supports(torch.randn(4, 32, dtype=torch.float16), values, meta, None)
    assert "K = Kp" in sparse24_cuda._sparse24_supports(torch.randn(4, 30, dtype=torch.bfloat16), values, meta, None)
    offset = torch.randn(4 * 32 + 1, dtype=torch.bfloat16)[1:].view(4, 32)
    assert "aligned" in sparse24_cuda._sparse24_supports(offset, values, meta, None)
    v8, m8 = packing.compress_24(packing.prune_24(torch.randn(32, 48)).round().to(torch.int8))
    assert "multiple of 32" in sparse24_cuda._sparse24_int8_supports(torch.randn(4, 48, dtype=torch.bfloat16), v8, m8,
                                                                torch.ones(32), None)


# ================================================================ GPU
M_SIZES = (1, 16, 33, 4096)
KN = [(16, 16), (208, 80), (8192, 8192)]  # smallest legal, awkward, large
KN_IDS = ["K16N16", "K208N80", "K8192N8192"]
KN_SPARSE_INT8 = [(32, 16), (224, 80), (8192, 8192)]  # int8 2:4 needs K % 32
KN_SPARSE_INT8_IDS = ["K32N16", "K224N80", "K8192N8192"]


def _int8_weight(n, k, dev):
    w = torch.randn(n, k, device=dev)
    return packing.quantize_int8(w)


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("k,n", KN, ids=KN_IDS)
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_int8_mm_exact(m, k, n, out_dtype):
    dev = "cuda"
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=dev)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev)
    a_s, b_s = torch.rand(m, device=dev) / 100, torch.rand(n, device=dev) / 100
    bias = torch.randn(n, device=dev) if m % 2 else None
    out = C._C_int8_mm(a, a_s, b, b_s, bias, out_dtype)
    assert_exact(out, int8_scaled_mm_ref(a, a_s, b, b_s, bias, out_dtype), f"_C_int8_mm m={m} k={k} n={n}")


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("m", (0, 1, 33, 4096))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_int8_linear_cuda_exact(m, dtype):
    k, n = 1024, 528
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w_q, w_s = _int8_weight(n, k, "cuda")
    bias = torch.randn(n, device="cuda", dtype=dtype)
    with use_backend("cuda"):
        out = torch.ops.kernelswap.int8_linear(x, w_q, w_s, bias)
    assert_exact(out, int8_linear_ref(x, w_q, w_s, bias), f"int8_linear m={m}")


def _sparse_weight(n, k, dtype, dev):
    w = packing.prune_24(torch.randn(n, k, device=dev))
    if dtype == torch.int8:
        w_q, w_s = packing.quantize_int8(w)
        values, meta = packing.compress_24(w_q)
        return values, meta, w_s
    values, meta = packing.compress_24(w.to(dtype))
    return values, meta, None


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("k,n", KN, ids=KN_IDS)
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sparse24_linear_close(m, k, n, dtype):
    dev = "cuda"
    values, meta, _ = _sparse_weight(n, k, dtype, dev)
    x = torch.randn(m, k, device=dev, dtype=dtype)
    bias = torch.randn(n, device=dev, dtype=dtype) if m % 2 else None
    with use_backend("cuda"):
        out = torch.ops.kernelswap.sparse24_linear(x, values, meta, bias)
    w = packing.decompress_24(values, meta, k)
    ref64 = x.double() @ w.double().t() + (0 if bias is None else bias.double())
    baseline = F.linear(x, w, bias)  # cuBLAS at the same precision
    assert_close_to_ref(out, ref64, baseline, what=f"sparse24_linear m={m} k={k} n={n} {dtype}")


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("k,n", KN_SPARSE_INT8, ids=KN_SPARSE_INT8_IDS)
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sparse24_int8_linear_exact(m, k, n, dtype):
    dev = "cuda"
    values, meta, w_s = _sparse_weight(n, k, torch.int8, dev)
    x = torch.randn(m, k, device=dev, dtype=dtype)
    bias = torch.randn(n, device=dev) if m % 2 else None
    with use_backend("cuda"):
        out = torch.ops.kernelswap.sparse24_int8_linear(x, values, meta, w_s, bias)
    assert_exact(out, sparse24_int8_linear_ref(x, values, meta, w_s, bias), f"sparse24_int8 m={m} k={k} n={n}")


@needs_cuda
@needs_sm90
def test_sparse24_prepared_once_per_weight():
    values, meta, _ = _sparse_weight(64, 128, torch.bfloat16, "cuda")
    # more rows than the 2:4 GEMV serves even when forced, so the CUTLASS GEMM runs
    x = torch.randn(gemv_cuda.MAX_M + 1, 128, device="cuda", dtype=torch.bfloat16)
    with use_backend("cuda"):
        torch.ops.kernelswap.sparse24_linear(x, values, meta, None)
        before = len(sparse24_cuda._SPARSE)
        torch.ops.kernelswap.sparse24_linear(x, values, meta, None)
        assert len(sparse24_cuda._SPARSE) == before
        values.mul_(2)  # in-place change: a new version, so a new prepared copy
        torch.ops.kernelswap.sparse24_linear(x, values, meta, None)
        assert len(sparse24_cuda._SPARSE) == before + 1


@needs_cuda
@needs_sm90
def test_sparse24_bad_meta_raises():
    values, meta, _ = _sparse_weight(64, 128, torch.bfloat16, "cuda")
    meta = meta.clone()
    meta[0, 0] = 0x55  # positions (1, 1): a position named twice
    x = torch.randn(2, 128, device="cuda", dtype=torch.bfloat16)
    with use_backend("cuda"), pytest.raises(ValueError, match="not 2:4 metadata"):
        torch.ops.kernelswap.sparse24_linear(x, values, meta, None)


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("m,served", [(1, "cuda"), (8, "cuda"), (9, "triton"), (16, "triton"), (17, "cuda"),
                                      (64, "cuda")])
def test_sparse24_small_m_goes_to_the_triton_gemv(m, served):
    """M <= gemv_cuda.GEMV_UP_TO_M (8): the 2:4 decode GEMV; up to sparse24_cuda.SPARSE24_TRITON_UP_TO_M
    (16): the Triton GEMV (measured crossovers); forcing cuda still serves every M."""
    from kernelswap.ops.backend import choose

    values, meta, _ = _sparse_weight(64, 128, torch.bfloat16, "cuda")
    x = torch.randn(m, 128, device="cuda", dtype=torch.bfloat16)
    assert choose("sparse24_linear", x.device, x, values, meta, None).backend == served
    with use_backend("cuda"):
        assert choose("sparse24_linear", x.device, x, values, meta, None).backend == "cuda"


@needs_cuda
@needs_sm90
@pytest.mark.parametrize("m,n,served", [(1, 8192, "cuda"), (2, 8192, "triton"), (16, 8192, "triton"),
                                        (17, 8192, "cuda"), (16, 8176, "cuda")])
def test_int8_small_m_on_large_weights_goes_to_the_triton_gemm(m, n, served):
    """M = 1: the W8A8 GEMV; M = 2 to int8_cuda.INT8_TRITON_UP_TO_M (16) on a weight of
    INT8_TRITON_FROM_NK elements or more: Triton's quantize + GEMM; otherwise the CUTLASS GEMM
    (measured crossovers); forcing cuda still serves every M."""
    from kernelswap.ops import int8_cuda
    from kernelswap.ops.backend import choose

    k = int8_cuda.INT8_TRITON_FROM_NK // 8192
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    w_s = torch.rand(n, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    assert choose("int8_linear", x.device, x, w_q, w_s, None).backend == served
    with use_backend("cuda"):
        assert choose("int8_linear", x.device, x, w_q, w_s, None).backend == "cuda"


@needs_cuda
@pytest.mark.parametrize("m,served", [(16, "triton"), (-1, "triton"), (0, "torch")])
def test_w8a16_large_m_goes_to_cublas(m, served):
    """The measured crossover (int8_triton.W8A16_TORCH_FROM_M; m <= 0: that far from it), where the
    mixed-input GEMM (an sm_90 GPU and a _C that has it: from its M window on) does not take that M first."""
    from kernelswap.ops import int8_triton, mixed_cuda
    from kernelswap.ops._cuda import sm90_reason
    from kernelswap.ops.backend import choose

    m = m if m > 0 else int8_triton.W8A16_TORCH_FROM_M + m
    if mixed_cuda._build_reason() is None and sm90_reason(torch.cuda.current_device()) is None and \
            m >= mixed_cuda.MIXED_M["int8_weight_linear"][0]:
        served = "cuda"
    w_q, w_s = packing.quantize_int8(torch.randn(64, 128, device="cuda"))
    x = torch.randn(m, 128, device="cuda", dtype=torch.bfloat16)
    assert choose("int8_weight_linear", x.device, x, w_q, w_s, None).backend == served
    with use_backend("triton"):
        assert choose("int8_weight_linear", x.device, x, w_q, w_s, None).backend == "triton"
