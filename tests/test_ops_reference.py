"""Every public op against an independent float64 computation, on awkward shapes.

The ops run on whatever backend the dispatcher picks for the device (on CPU: the
reference path). Integer math is checked exactly; float outputs against float64
within 2x of PyTorch's own error at the same precision.
"""
import pytest
import torch
import torch.nn.functional as F

import kernelswap as ks
from kernelswap import packing as P
from utils import AWKWARD_M, DEVICES, assert_close_to_ref, assert_exact, non_contiguous, sqnr_db

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (K, N): not powers of two; K not a multiple of 8, 32 or 128 in some.
KN = [(37, 19), (72, 40), (130, 24)]


def _x(m, k, dtype, device, batch=()):
    return torch.randn(*batch, m, k, device=device).to(dtype)


def _baseline_linear(x, w, bias=None):
    """PyTorch at the same precision: weight rounded to x.dtype, F.linear."""
    return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))


def _ref64_linear(x, w, bias=None):
    out = x.double() @ w.double().t()
    return out + bias.double() if bias is not None else out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", AWKWARD_M)
def test_quantize_per_token(device, dtype, m):
    x = _x(m, 37, dtype, device, batch=(2,))
    if m:
        x[:, 0, :] = 0  # an all-zero row
    q, s = ks.ops.quantize_per_token_int8(x)
    assert q.shape == x.shape and q.dtype == torch.int8 and s.shape == x.shape[:-1]
    x64 = x.double()
    s64 = x64.abs().amax(dim=-1) / 127 if m else x64.new_zeros(x.shape[:-1])
    assert torch.allclose(s.double(), s64, rtol=1e-6, atol=0)
    # Correct rounding against the stored scale: |q - x / s| <= 1/2 (a hair for ties).
    safe = torch.where(s == 0, torch.ones_like(s), s).double()[..., None]
    assert float(torch.cat([(q.double() - x64 / safe).abs().flatten(), x64.new_zeros(1)]).max()) <= 0.5 + 1e-6
    if m:
        assert_exact(q[:, 0], torch.zeros_like(q[:, 0]), "all-zero row -> q 0")
        assert_exact(s[:, 0], torch.zeros_like(s[:, 0]), "all-zero row -> scale 0")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", AWKWARD_M)
@pytest.mark.parametrize("k,n", KN)
def test_int8_scaled_mm_exact(device, m, k, n):
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
    a_s, b_s = torch.rand(m, device=device) + 0.1, torch.rand(n, device=device) + 0.1
    bias = torch.randn(n, device=device)
    out = ks.ops.int8_scaled_mm(a, a_s, b, b_s, bias, torch.float32)
    acc = a.double() @ b.double().t()  # exact integers in float64
    ref = acc * a_s.double()[:, None] * b_s.double()[None, :] + bias.double()
    assert_close_to_ref(out, ref, ref.float(), factor=4.0, floor=1e-7, what="int8_scaled_mm fp32")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", AWKWARD_M)
@pytest.mark.parametrize("k,n", KN)
def test_int8_linear(device, dtype, m, k, n):
    x = non_contiguous(_x(m, k, dtype, device, batch=(2,)))
    w, bias = torch.randn(n, k, device=device), torch.randn(n, device=device)
    w_q, w_s = P.quantize_int8(w)
    out = ks.ops.int8_linear(x, w_q, w_s, bias)
    assert out.shape == (2, m, n) and out.dtype == dtype
    # Independent float64: the same per-token quantization, integer product, scales.
    # The contract fixes the quantizer in fp32: scale = amax / 127, q = round(fp32(x / scale)).
    xf = x.float()
    s32 = xf.abs().amax(dim=-1, keepdim=True) / 127 if m else xf.new_zeros(2, 0, 1)
    q64 = torch.round(xf / torch.where(s32 == 0, 1, s32)).clamp(-127, 127).double()
    ref = (q64 @ w_q.double().t()) * s32.double() * w_s.double() + bias.double()
    assert_close_to_ref(out, ref, ref.to(dtype), factor=2.0, floor=1e-6, what="int8_linear")
    if m:
        assert sqnr_db(_ref64_linear(x, w, bias), out) > 25, "W8A8 much worse than the float layer"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", AWKWARD_M)
@pytest.mark.parametrize("k,n", KN)
def test_int8_weight_linear(device, dtype, m, k, n):
    x = _x(m, k, dtype, device, batch=(3,))
    w, bias = torch.randn(n, k, device=device), torch.randn(n, device=device)
    w_q, w_s = P.quantize_int8(w)
    out = ks.ops.int8_weight_linear(x, w_q, w_s, bias)
    w_deq = P.dequantize_int8(w_q, w_s)
    ref = _ref64_linear(x, w_deq.double(), bias)
    assert_close_to_ref(out, ref, _baseline_linear(x, w_deq, bias), what="int8_weight_linear")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", AWKWARD_M)
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_int4_linear(device, dtype, m, group_size, symmetric):
    k, n = 200, 24  # K not a multiple of any group size: padded
    x = _x(m, k, dtype, device, batch=(2,))
    w, bias = torch.randn(n, k, device=device), torch.randn(n, device=device)
    q = P.quantize_int4(w, group_size, symmetric)
    out = ks.ops.int4_linear(x, q.packed, q.scales, q.zeros, group_size, bias)
    w_deq = P.dequantize_int4(q)
    ref = _ref64_linear(x, w_deq, bias)
    assert_close_to_ref(out, ref, _baseline_linear(x, w_deq, bias), what="int4_linear")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", AWKWARD_M)
@pytest.mark.parametrize("k,n", KN)
def test_sparse24_linear(device, dtype, m, k, n):
    x = non_contiguous(_x(m, k, dtype, device))
    w = P.prune_24(torch.randn(n, k, device=device)).to(dtype)
    values, meta = P.compress_24(w)
    out = ks.ops.sparse24_linear(x, values, meta, None)
    ref = _ref64_linear(x, w)
    assert_close_to_ref(out, ref, _baseline_linear(x, w), what="sparse24_linear")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", AWKWARD_M)
@pytest.mark.parametrize("k,n", KN)
def test_sparse24_int8_linear(device, m, k, n):
    x = _x(m, k, torch.float32, device, batch=(2,))
    w_q, w_s = P.quantize_int8(P.prune_24(torch.randn(n, k, device=device)))
    values, meta = P.compress_24(w_q)
    bias = torch.randn(n, device=device)
    out = ks.ops.sparse24_int8_linear(x, values, meta, w_s, bias)
    # Same math as dense W8A8 on the decompressed int8 weight.
    dense = ks.ops.int8_linear(x, w_q, w_s, bias)
    assert_close_to_ref(out, dense.double(), dense, factor=1.0, floor=1e-6, what="sparse24_int8 vs dense int8")


CONV_CASES = {
    # name: (C_in, C_out, kernel, stride, padding, dilation, groups, H, W)
    "1x1": (8, 12, 1, 1, 0, 1, 1, 5, 7),
    "3x3_pad": (6, 10, 3, 1, 1, 1, 1, 9, 8),
    "3x3_s2": (6, 10, 3, 2, 1, 1, 1, 9, 9),
    "dilated": (4, 6, 3, 1, 2, 2, 1, 11, 10),
    "grouped": (8, 12, 3, 1, 1, 1, 4, 7, 7),
    "depthwise_s2": (16, 16, 3, 2, 1, 1, 16, 10, 9),
    "stem7x7": (3, 8, 7, 2, 3, 1, 1, 17, 17),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("activation", ks.ops.ACTIVATIONS)
@pytest.mark.parametrize("residual", [False, True], ids=["", "res"])
def test_conv_bn_act(device, dtype, case, activation, residual):
    c_in, c_out, kk, s, p, d, g, h, w_ = CONV_CASES[case]
    x = torch.randn(2, c_in, h, w_, device=device).to(dtype).to(memory_format=torch.channels_last)
    weight = (torch.randn(c_out, c_in // g, kk, kk, device=device) / (c_in // g * kk * kk) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device=device).to(dtype)
    y64 = F.conv2d(x.double(), weight.double(), bias.double(), s, p, d, g)
    res = torch.randn_like(y64).to(dtype) if residual else None
    out = ks.ops.conv_bn_act(x, weight, bias, [s, s], [p, p], [d, d], g, activation, res)
    assert out.is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
    act = ks.ops.apply_activation
    ref = act(y64 + (res.double() if residual else 0), activation)
    base = F.conv2d(x, weight, bias, s, p, d, g)  # PyTorch at the same precision
    base = act(base + res if residual else base, activation)
    assert_close_to_ref(out, ref, base, factor=2.0, floor=1e-6, what=f"conv_bn_act {case} {activation}")
