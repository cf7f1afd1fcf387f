"""The weight-only layers' mixed-input CUTLASS GEMMs (ops/mixed_cuda.py, csrc/sm90_mixed_ops.cu).

CPU: the prepared int4 scale / zero give the reference's dequantized weight exactly (fp32, and
rounded to bf16 / fp16 the same as the reference cast); the refusals with their reasons; the
entry points' Meta shapes and argument errors. sm_90 GPU: both GEMMs against float64 within 2x the
error of PyTorch's own layer on the dequantized 16-bit weight, at M past the 128-token tile, N not
a multiple of the 128-row tile, K past a K tile, groups 64 / 128 symmetric and asymmetric, bias or
not; the public ops route large M here; repeated runs and graph replays give the same bits.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernelswap.ops import backend, int4_linear, int8_weight_linear, mixed_cuda
from kernelswap.ops.int4 import dequantize_int4_ref, unpack_int4
from kernelswap.packing import quantize_int4

from utils import assert_close_to_ref, assert_repeats_and_replays, needs_ext, raises_safely

SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_sm90 = pytest.mark.skipif(not SM90, reason="needs an sm_90 GPU")


def _int4(n, k, group, symmetric, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = quantize_int4(torch.randn(n, k, generator=g), group_size=group, symmetric=symmetric)
    return q._replace(packed=q.packed.to(device), scales=q.scales.to(device),
                      zeros=None if q.zeros is None else q.zeros.to(device))


# ---------------------------------------------------------------- CPU: the prepared scale / zero
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n", [16, 40, 4 * 37])
def test_mixed_scales_give_the_reference_weight_exactly(group, symmetric, n):
    q = _int4(n, 3 * group, group, symmetric)
    s, z = mixed_cuda.mixed_scales(q.scales, q.zeros)
    assert s.shape == z.shape == (3, n) and s.dtype == z.dtype == torch.float32
    assert s.is_contiguous() and z.is_contiguous()
    codes = unpack_int4(q.packed).float()  # (N, Kp)
    groups = torch.arange(codes.shape[1]) // group
    w = codes * s.t()[:, groups] + z.t()[:, groups]  # what the mainloop computes, in fp32
    ref = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)
    assert torch.equal(w, ref), "code * scale + zero differs from (code - z) * s in fp32"
    for dt in (torch.bfloat16, torch.float16):
        assert torch.equal(w.to(dt), ref.to(dt)), f"one rounding to {dt} differs from the reference cast"


def test_refusals_name_the_reason():
    q = _int4(32, 256, 128, False)
    x = torch.randn(200, 256, dtype=torch.bfloat16)
    s = q.scales
    assert "float32" in mixed_cuda._int4_supports(x.float(), q.packed, s, q.zeros, 128, None)
    assert "not a CUDA tensor" in mixed_cuda._int4_supports(x, q.packed, s, q.zeros, 128, None)
    q32 = _int4(32, 256, 32, False)
    assert "groups (64, 128)" in mixed_cuda._int4_supports(x, q32.packed, q32.scales, q32.zeros, 32, None)
    assert "padded K=256" in mixed_cuda._int4_supports(x[:, :250], q.packed, s, q.zeros, 128, None)
    w_q = torch.randint(-127, 128, (24, 256), dtype=torch.int8)
    assert "multiples of 16" in mixed_cuda._w8a16_supports(x, w_q, torch.ones(24), None)
    assert "float32" in mixed_cuda._w8a16_supports(x.float(), w_q[:16], torch.ones(16), None)
    assert "bfloat16 activations only" in mixed_cuda._w8a16_supports(x.half(), w_q[:16], torch.ones(16), None)


@needs_ext
@raises_safely
def test_entry_points_meta_shapes_and_errors():
    mm4, mm8 = torch.ops.kernelswap._C_int4_mm, torch.ops.kernelswap._C_int8_weight_mm
    x = torch.empty(300, 256, dtype=torch.bfloat16, device="meta")
    w4 = torch.empty(48, 128, dtype=torch.uint8, device="meta")
    sz = torch.empty(2, 48, device="meta")
    assert mm4(x, w4, sz, sz, None, 128).shape == (300, 48)
    w8 = torch.empty(48, 256, dtype=torch.int8, device="meta")
    y = mm8(x, w8, torch.empty(48, device="meta"), None)
    assert y.shape == (300, 48) and y.dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="group_size must be 64 or 128"):
        mm4(x, w4, torch.empty(8, 48, device="meta"), torch.empty(8, 48, device="meta"), None, 32)
    with pytest.raises(RuntimeError, match=r"scale must be \(K / group_size, N\).*kernelswap\.ops\.mixed_cuda\.mixed_scales"):
        mm4(x, w4, torch.empty(48, 2, device="meta"), sz, None, 128)
    with pytest.raises(RuntimeError, match="holds 128 codes a row"):
        mm4(x, torch.empty(48, 64, dtype=torch.uint8, device="meta"), sz, sz, None, 128)
    with pytest.raises(RuntimeError, match="N must be a positive multiple of 16"):
        mm8(x, torch.empty(40, 256, dtype=torch.int8, device="meta"), torch.empty(40, device="meta"), None)
    with pytest.raises(RuntimeError, match="x must be bfloat16"):
        mm8(x.half(), w8, torch.empty(48, device="meta"), None)


# ---------------------------------------------------------------- sm_90: the kernels
# M past the 128-token tile, and past the 256-token one (from kMixedLargeFromM = 512 on).
SHAPES = [(129, 128, 16), (300, 640, 272), (777, 640, 272), (1024, 4096, 4096 + 128)]


@needs_sm90
@needs_ext
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_weight_mm_against_float64(m, k, n, dtype, bias):
    torch.manual_seed(m + k + n)
    x = torch.randn(m, k, device="cuda").to(dtype)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    w_s = torch.rand(n, device="cuda") * 1e-2 + 1e-4
    b = torch.randn(n, device="cuda") if bias else None
    out = torch.ops.kernelswap._C_int8_weight_mm(x, w, w_s, b)
    assert out.dtype == dtype and out.shape == (m, n)
    ref64 = (x.double() @ w.double().t()) * w_s.double() + (0 if b is None else b.double())
    baseline = F.linear(x, (w.float() * w_s[:, None]).to(dtype), None if b is None else b.to(dtype))
    assert_close_to_ref(out, ref64, baseline, what=f"W8A16 mixed {m}x{k}x{n} {dtype}")
    assert_repeats_and_replays(lambda: torch.ops.kernelswap._C_int8_weight_mm(x, w, w_s, b), "W8A16 mixed")


@needs_sm90
@needs_ext
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16])
@pytest.mark.parametrize("group,symmetric", [(64, True), (128, False), (64, False), (128, True)])
def test_int4_mm_against_float64(m, k, n, dtype, group, symmetric):
    if k % group:
        pytest.skip(f"K={k} is not a multiple of group {group}: the weight is padded (tested by the routing test)")
    torch.manual_seed(m + k + n + group)
    q = _int4(n, k, group, symmetric, device="cuda", seed=k + n)
    x = torch.randn(m, k, device="cuda").to(dtype)
    b = torch.randn(n, device="cuda") if symmetric else None
    s, z = mixed_cuda.mixed_scales(q.scales, q.zeros)
    out = torch.ops.kernelswap._C_int4_mm(x, q.packed, s, z, b, group)
    w = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)
    ref64 = x.double() @ w.double().t() + (0 if b is None else b.double())
    baseline = F.linear(x, w.to(dtype), None if b is None else b.to(dtype))
    assert_close_to_ref(out, ref64, baseline, what=f"W4A16 mixed {m}x{k}x{n} g{group} sym={symmetric} {dtype}")
    assert_repeats_and_replays(lambda: torch.ops.kernelswap._C_int4_mm(x, q.packed, s, z, b, group), "W4A16 mixed")


@needs_sm90
@needs_ext
def test_zero_rows():
    x = torch.empty(0, 128, dtype=torch.bfloat16, device="cuda")
    w = torch.zeros(16, 128, dtype=torch.int8, device="cuda")
    assert torch.ops.kernelswap._C_int8_weight_mm(x, w, torch.ones(16, device="cuda"), None).shape == (0, 16)


class _FakeCudaX:
    """What the supports predicates read of x (shape, dtype, device, data_ptr), on a "cuda" device."""

    def __init__(self, m, k):
        self.shape, self.dtype, self.device = (m, k), torch.bfloat16, torch.device("cuda")

    def data_ptr(self):
        return 0


@pytest.mark.parametrize("op", ["int8_weight_linear", "int4_linear"])
def test_the_gemm_serves_its_measured_m_window(op, monkeypatch):
    monkeypatch.setattr(mixed_cuda, "_build_reason", lambda: None)
    monkeypatch.setattr(mixed_cuda, "gemm_reason", lambda *a: None)  # an sm_90 GPU and aligned tensors
    lo, hi = mixed_cuda.MIXED_M[op]
    w = torch.zeros(64, 256, dtype=torch.int8)
    cases = [(1, False), (lo - 1, False), (lo, True)]
    cases += [(1 << 20, True)] if hi is None else [(hi - 1, True), (hi, False), (4 * hi, False)]
    for m, served in cases:
        why = mixed_cuda._reason(op, _FakeCudaX(m, 256), 256, 64, w)
        assert (why is None) == served, f"{op} M={m}: {why}"
        if not served:
            assert isinstance(why, backend.Preference) and ("faster here" in why)


@needs_sm90
@needs_ext
@pytest.mark.parametrize("m", [128, 517])
def test_public_ops_route_large_m_here(m):
    q = _int4(4096 + 16, 1024, 128, False, device="cuda")
    x = torch.randn(2, m, 1024, device="cuda", dtype=torch.bfloat16)
    backend.prepare_weights("int4_linear", q.packed, q.scales, q.zeros, 128, None)
    impl = backend.choose("int4_linear", x.device, x.reshape(-1, 1024), q.packed, q.scales, q.zeros, 128, None)
    assert impl.fn is mixed_cuda._int4_mm
    out = int4_linear(x, q.packed, q.scales, q.zeros, 128, None)
    w = dequantize_int4_ref(q.packed, q.scales, q.zeros, 128)
    assert_close_to_ref(out, x.double() @ w.double().t(), F.linear(x, w.to(x.dtype)), what="int4_linear routed")

    w_q = torch.randint(-127, 128, (4096 + 16, 1024), dtype=torch.int8, device="cuda")
    w_s = torch.rand(4096 + 16, device="cuda") * 1e-2
    impl = backend.choose("int8_weight_linear", x.device, x.reshape(-1, 1024), w_q, w_s, None)
    assert impl.fn is mixed_cuda._int8_weight_mm
    out = int8_weight_linear(x, w_q, w_s, None)
    assert_close_to_ref(out, (x.double() @ w_q.double().t()) * w_s.double(),
                        F.linear(x, (w_q.float() * w_s[:, None]).to(x.dtype)), what="int8_weight_linear routed")


@needs_sm90
@needs_ext
def test_int4_without_prepared_scales_declines_under_capture():
    q = _int4(256, 512, 128, True, device="cuda", seed=7)
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        why = mixed_cuda._int4_supports(x, q.packed, q.scales, q.zeros, 128, None)
    assert isinstance(why, backend.Transient) and "not prepared" in why
