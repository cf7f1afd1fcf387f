"""cuSPARSELt backend of sparse24_linear (ops/sparse24_cslt.py).

CPU: the decline reasons (dtype, K != Kp, 16-alignment, offset views), the per-M rule that
the CUTLASS GEMM reads, the registration order in the torch backend, and the row padding /
transposition around torch._cslt_sparse_mm (driven by a dense matmul that follows the op's
schema, since cuSPARSELt has no CPU kernel). CUDA: the real op against a float64 reference
at awkward M (padding), fp32 and bf16 bias, under CUDA-graph capture, and which backend the
dispatcher picks on either side of CSLT_FROM_M.
"""
from __future__ import annotations

import pytest
import torch

from kernelswap import packing as P
from kernelswap.ops import backend, sparse24_cslt
from kernelswap.ops.backend import Preference, Transient, use_backend
from kernelswap.ops.sparse24 import decompress_24_ref, sparse24_linear, sparse24_linear_ref

from utils import assert_close_to_ref, needs_cuda


def _case(m, n, k, dtype=torch.float16, device="cpu"):
    w = P.prune_24(torch.randn(n, k, device=device) / k**0.5).to(dtype)
    values, meta = P.compress_24(w)
    return torch.randn(m, k, device=device).to(dtype), w, values, meta


# ---------------------------------------------------------------- CPU: reasons and rule
def test_static_reason_accepts_aligned_16bit():
    for dtype in (torch.float16, torch.bfloat16):
        x, _, values, _ = _case(5, 48, 64, dtype)
        assert sparse24_cslt.static_reason(x, values) == sparse24_cslt.available_reason()


@pytest.mark.parametrize("what", ["fp32", "mixed", "k24", "n40", "offset", "kp"])
def test_static_reason_declines(what):
    x, _, values, _ = _case(5, 48, 64)
    expect = {"fp32": "takes bfloat16", "mixed": "multiplies one dtype", "k24": "multiples of 16",
              "n40": "multiples of 16", "offset": "16-byte aligned", "kp": "K = Kp"}[what]
    if what == "fp32":
        x, values = x.float(), values.float()
    elif what == "mixed":
        values = values.to(torch.bfloat16)
    elif what == "k24":
        x, _, values, _ = _case(5, 48, 24)
    elif what == "n40":
        x, _, values, _ = _case(5, 40, 64)
    elif what == "offset":
        x = torch.randn(5 * 64 + 1, dtype=x.dtype)[1:].view(5, 64)
    elif what == "kp":
        x = x[:, :56].contiguous()
    why = sparse24_cslt.static_reason(x, values)
    assert why is not None and expect in why, why


def test_preference_follows_cslt_from_m(monkeypatch):
    monkeypatch.setattr(sparse24_cslt, "CSLT_FROM_M", 256)
    monkeypatch.setattr(sparse24_cslt, "available_reason", lambda: None)  # the rule itself, any build
    for m, wanted in ((1, False), (255, False), (256, True), (4096, True)):
        x, _, values, _ = _case(m, 32, 32)
        why = sparse24_cslt.preference(x, values)
        assert (why is not None) == wanted, (m, why)
        if wanted:
            assert isinstance(why, Preference) and "CSLT_FROM_M" in why
    x, _, values, _ = _case(512, 40, 32)  # cuSPARSELt cannot take N=40: ours keeps it
    assert sparse24_cslt.preference(x, values) is None
    monkeypatch.setattr(sparse24_cslt, "CSLT_FROM_M", None)
    x, _, values, _ = _case(4096, 32, 32)
    assert sparse24_cslt.preference(x, values) is None


def test_preference_needs_cusparselt(monkeypatch):
    monkeypatch.setattr(sparse24_cslt, "available_reason", lambda: "no cuSPARSELt")
    x, _, values, _ = _case(4096, 32, 32)
    assert sparse24_cslt.preference(x, values) is None
    assert sparse24_cslt.static_reason(x, values) == "no cuSPARSELt"


def test_cslt_is_the_first_torch_backend():
    torch_impls = [i.fn.__name__ for i in backend._REGISTRY["sparse24_linear"] if i.backend == "torch"]
    assert torch_impls[0] == "_sparse24_linear_cslt", torch_impls
    assert "_sparse24_linear_torch" in torch_impls[1:]  # the dense fallback still follows it


def test_register_first_goes_before_same_backend():
    op = "test_only_register_first"
    try:
        backend.register(op, "torch")(lambda x: "late")
        backend.register(op, "reference")(lambda x: "ref")
        backend.register(op, "torch", first=True)(lambda x: "early")
        assert [i.fn(None) for i in backend._REGISTRY[op]] == ["early", "late", "ref"]
    finally:
        backend._REGISTRY.pop(op, None)
        backend._candidates.cache_clear()


def _dense_cslt_mm(w_dense, b_t, bias, alpha, out_dtype, transpose_result):
    """torch._cslt_sparse_mm's contract with the weight dense: (N, K) @ (K, M) + bias[:, None] as
    (N, M) row-major, or transposed to (M, N) row-major when transpose_result."""
    assert alpha is None and out_dtype is None
    assert b_t.shape[1] % sparse24_cslt.ALIGN_DENSE_M == 0, "dense operand not padded"
    out = w_dense.double() @ b_t.double() + (0 if bias is None else bias.double()[:, None])
    return (out.t() if transpose_result else out).contiguous().to(b_t.dtype)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("m", [1, 7, 8, 13])
def test_sparse_mm_rows_pads_and_transposes(m, fused, monkeypatch):
    monkeypatch.setattr(sparse24_cslt, "FUSED_TRANSPOSE", fused)
    x, w, values, meta = _case(m, 32, 48)
    bias = torch.randn(32, dtype=x.dtype)
    dense = decompress_24_ref(values, meta)
    assert torch.equal(dense, w)  # what _cslt_compress is given: the 2:4 weight itself
    assert int((dense.reshape(32, -1, 4) != 0).sum(-1).max()) <= 2
    out = sparse24_cslt.sparse_mm_rows(_dense_cslt_mm, dense, x, bias)
    assert out.shape == (m, 32) and out.is_contiguous() == fused
    if not fused:
        assert out.stride() == (1, m + (-m % sparse24_cslt.ALIGN_DENSE_M))
    ref = sparse24_linear_ref(x, values, meta, bias)
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)


def test_prepare_skips_cpu_and_unaligned():
    x, _, values, meta = _case(4, 32, 32)
    before = len(sparse24_cslt._CSLT)
    sparse24_cslt._prepare(values, meta, None)  # CPU buffers: nothing to compress
    assert len(sparse24_cslt._CSLT) == before


# ---------------------------------------------------------------- CUDA
needs_cslt = pytest.mark.skipif(not torch.cuda.is_available() or sparse24_cslt.available_reason() is not None,
                                reason="needs CUDA and a torch with cuSPARSELt")


def _check(out, x, w, b, what):
    ref64 = x.double() @ w.double().t() + (0 if b is None else b.double())
    baseline = torch.nn.functional.linear(x, w, None if b is None else b.to(x.dtype))
    assert_close_to_ref(out, ref64, baseline, what=what)


@pytest.mark.gpu
@needs_cslt
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m", [1, 7, 300, 513])
@pytest.mark.parametrize("bias", ["none", "same", "fp32"])
def test_cslt_forced_matches_reference(m, dtype, bias):
    x, w, values, meta = _case(m, 528, 1040, dtype, "cuda")
    b = None if bias == "none" else torch.randn(528, device="cuda", dtype=dtype if bias == "same" else torch.float32)
    backend.prepare_weights("sparse24_linear", values, meta, b)
    with use_backend("torch"):
        assert backend.choose("sparse24_linear", x.device, x, values, meta, b).fn.__name__ == "_sparse24_linear_cslt"
        out = sparse24_linear(x, values, meta, b)
    assert out.dtype == dtype and out.is_contiguous() == sparse24_cslt.FUSED_TRANSPOSE  # else the (N, M) product's view
    _check(out, x, w, None if b is None else b.to(dtype), f"cslt m={m} {dtype} bias={bias}")


@pytest.mark.gpu
@needs_cslt
def test_cslt_under_cuda_graph():
    x, w, values, meta = _case(256, 512, 1024, torch.bfloat16, "cuda")
    b = torch.randn(512, device="cuda", dtype=torch.bfloat16)
    backend.prepare_weights("sparse24_linear", values, meta, b)
    run = sparse24_cslt._bind(values, meta, b)
    run(x)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = run(x)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    _check(out, x, w, b, "cslt replayed")


@pytest.mark.gpu
@needs_cslt
def test_prepare_makes_the_compressed_weight_only_where_it_is_chosen(monkeypatch):
    from kernelswap.ops import sparse24_cuda
    from kernelswap.ops._cuda import device_index, sm90_reason

    _, _, values, meta = _case(1, 512, 1024, torch.bfloat16, "cuda")
    if sm90_reason(device_index(values)) is not None:
        # No sm_90a GEMM: the copy is made where no sm_80 CUTLASS GEMM serves, whatever CSLT_FROM_M says.
        want = sparse24_cuda._sm80_weights_reason(values) is not None
        for from_m in (None, 256):
            monkeypatch.setattr(sparse24_cslt, "CSLT_FROM_M", from_m)
            backend.prepare_weights("sparse24_linear", values, meta, None)
            assert sparse24_cslt._CSLT.holds((values, meta)) == want, from_m
        return
    monkeypatch.setattr(sparse24_cslt, "CSLT_FROM_M", None)  # ours at every M: no copy
    backend.prepare_weights("sparse24_linear", values, meta, None)
    assert not sparse24_cslt._CSLT.holds((values, meta))
    monkeypatch.setattr(sparse24_cslt, "CSLT_FROM_M", 256)
    backend.prepare_weights("sparse24_linear", values, meta, None)
    assert sparse24_cslt._CSLT.holds((values, meta))


@pytest.mark.gpu
@needs_cslt
def test_cslt_declines_under_capture_without_prepared_weight():
    x, _, values, meta = _case(256, 512, 1024, torch.bfloat16, "cuda")
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        why = sparse24_cslt._supports(x, values, meta, None)
    assert isinstance(why, Transient) and "not prepared" in why
    assert not sparse24_cslt._CSLT.holds((values, meta))


@pytest.mark.gpu
@needs_cslt
@pytest.mark.parametrize("from_m", [None, 256])
def test_auto_choice_across_cslt_from_m(monkeypatch, from_m):
    """Auto mode on the GPU: cuSPARSELt from CSLT_FROM_M tokens on where our sm_90a GEMM
    would serve, ours below it (and the Triton GEMV at M <= 16); with None (the measured
    setting), ours at every M. Both settings, whichever the module ships with."""
    from kernelswap.ops import sparse24_cuda
    from kernelswap.ops._cuda import device_index, sm90_reason

    monkeypatch.setattr(sparse24_cslt, "CSLT_FROM_M", from_m)
    _, _, values, meta = _case(1, 512, 1024, torch.bfloat16, "cuda")
    if sm90_reason(device_index(values)) is not None:
        # No sm_90a GEMM: past the Triton GEMV, cuSPARSELt serves exactly where no sm_80 CUTLASS GEMM
        # does, at either setting.
        cslt = sparse24_cuda._sm80_weights_reason(values) is not None
        for m in (255, 256, 4096):
            x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
            name = backend.choose("sparse24_linear", x.device, x, values, meta, None).fn.__name__
            assert (name == "_sparse24_linear_cslt") == cslt, (m, name)
        return
    for m in (sparse24_cuda.SPARSE24_TRITON_UP_TO_M + 1, 255, 256, 4096):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        name = backend.choose("sparse24_linear", x.device, x, values, meta, None).fn.__name__
        want = "_sparse24_linear_cslt" if from_m is not None and m >= from_m else "_sparse24_linear_cuda"
        assert name == want, (m, name)
