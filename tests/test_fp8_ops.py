"""The FP8 op contract (kernelswap.ops.fp8): quantization against an independent e4m3 rounding
written from the format's definition, and fp8_linear against float64; edge cases of DESIGN.md.

The oracle for e4m3 rounding below does not use torch's float8 cast: it enumerates every finite
e4m3fn value (sign, 4-bit exponent with bias 7, 3-bit mantissa, subnormals, no infinities, 448
the largest) and rounds to the nearest, ties to the even mantissa.
"""
import pytest
import torch

import kernelswap as ks
from kernelswap import packing
from kernelswap.ops import fp8
from utils import AWKWARD_M, DEVICES, assert_exact, non_contiguous, rel_err, sqnr_db


def _e4m3_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """(every non-negative finite e4m3fn value ascending, whether its mantissa is even), float64."""
    vals, even = [], []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue  # the NaN encoding
            v = (m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
            vals.append(v)
            even.append(m % 2 == 0)
    return torch.tensor(vals, dtype=torch.float64), torch.tensor(even)


def _round_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Round float64 values (already within +-448) to the nearest e4m3fn value, ties to even."""
    grid, even = (t.to(v.device) for t in _e4m3_grid())
    a = v.abs().reshape(-1)
    hi = torch.searchsorted(grid, a).clamp(max=len(grid) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = (a - grid[lo]).abs(), (grid[hi] - a).abs()
    pick = torch.where(d_lo < d_hi, lo, hi)
    tie = d_lo == d_hi
    pick = torch.where(tie, torch.where(even[lo], lo, hi), pick)
    return (grid[pick] * v.sign().reshape(-1)).reshape(v.shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", AWKWARD_M)
def test_quantize_matches_the_e4m3_definition(device, dtype, m):
    x = (torch.randn(m, 37, device=device) * torch.logspace(-3, 3, 37, device=device)).to(dtype)
    q, s = ks.ops.quantize_per_token_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and q.shape == x.shape
    amax = x.float().abs().amax(dim=1) if m else torch.zeros(0, device=device)
    assert_exact(s, amax / torch.full_like(amax, 448.0), what="scale")
    scaled = (x.double() / s.double().clamp(min=1e-300)[:, None]).clamp(-448, 448)
    want = _round_e4m3((x.float() / s[:, None]).double().clamp(-448, 448)) if m else scaled
    assert_exact(q.double(), want, what=f"codes M={m} {dtype}")
    assert q.double().abs().max() <= 448 if m else True


def test_quantize_edge_rows():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, float("nan"), 2.0], [3.0, -3.0, 1e-6], [5e4, -5e4, 1.0]])
    q, s = ks.ops.quantize_per_token_fp8(x)
    assert s[0] == 0 and bool((q[0].float() == 0).all())  # all-zero row: scale 0, no NaN
    assert torch.isnan(s[1])  # NaN reaches the output through the scale
    assert q[2].float().tolist()[:2] == [448.0, -448.0]  # the row max maps to the largest code
    assert q[3].float().abs().max() == 448.0 and not torch.isnan(q[3].float()).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", AWKWARD_M)
def test_fp8_linear_is_the_exact_product_of_its_codes(device, dtype, m):
    w = torch.randn(29, 70, device=device)
    bias = torch.randn(29, device=device)
    w_q, w_s = packing.quantize_fp8(w)
    x = torch.randn(2, m, 70, device=device).to(dtype)
    out = ks.ops.fp8_linear(x, w_q, w_s, bias)
    assert out.shape == (2, m, 29) and out.dtype == dtype
    # Independent float64 computation from the codes: exact sum, one fp32 rounding, the epilogue.
    q, s = ks.ops.quantize_per_token_fp8(x.reshape(-1, 70))
    acc = (q.double() @ w_q.double().t()).float()
    want = ((acc * s[:, None]) * w_s[None, :] + bias.float()).to(dtype).reshape(2, m, 29)
    assert_exact(out, want, what=f"fp8_linear M={m} {dtype}")
    # And it is a faithful linear layer: W8A8 in e4m3 keeps ~30 dB of SQNR on Gaussian data.
    if m:
        ref = x.double() @ w.double().t() + bias.double()
        assert sqnr_db(ref, out) > 25.0


def test_fp8_linear_non_contiguous_and_checks():
    w_q, w_s = packing.quantize_fp8(torch.randn(16, 24))
    x = torch.randn(5, 24)
    torch.testing.assert_close(ks.ops.fp8_linear(non_contiguous(x), w_q, w_s, None),
                               ks.ops.fp8_linear(x, w_q, w_s, None), rtol=0, atol=0)
    with pytest.raises(TypeError, match="w_q must be float8_e4m3fn"):
        ks.ops.fp8_linear(x, w_q.float(), w_s, None)
    with pytest.raises(ValueError, match="K=23"):
        ks.ops.fp8_linear(x[:, :23], w_q, w_s, None)


def test_fp8_weight_quantization_and_gradient():
    w = torch.randn(12, 40)
    w_q, w_s = packing.quantize_fp8(w)
    assert rel_err(w_q.float() * w_s[:, None], w) < 0.05  # e4m3: 3 mantissa bits
    x = torch.randn(3, 40, requires_grad=True)
    y = torch.ops.kernelswap.fp8_linear(x, w_q, w_s, None)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ (w_q.float() * w_s[:, None]))
    assert fp8.FP8_MAX == torch.finfo(torch.float8_e4m3fn).max


# ---------------------------------------------------------------- sparse24_fp8_linear
def _sparse_fp8(n, k, device="cpu"):
    """(the pruned e4m3 weight as an independent oracle, values, meta, w_scale)."""
    w_q, w_s = packing.quantize_fp8(packing.prune_24(torch.randn(n, k, device=device)))
    values, meta = packing.compress_24(w_q.float())
    return w_q, values.to(torch.float8_e4m3fn), meta, w_s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", AWKWARD_M)
@pytest.mark.parametrize("k", [64, 37])  # 37: K padded to Kp = 40 in the compressed format
def test_sparse24_fp8_linear_is_the_exact_product_of_its_codes(device, m, k):
    w_q, values, meta, w_s = _sparse_fp8(24, k, device)
    bias = torch.randn(24, device=device)
    x = torch.randn(m, 3, k, device=device).to(torch.bfloat16)
    out = ks.ops.sparse24_fp8_linear(x, values, meta, w_s, bias)
    assert out.shape == (m, 3, 24) and out.dtype == torch.bfloat16
    q, s = ks.ops.quantize_per_token_fp8(x.reshape(-1, k))
    acc = (q.double() @ w_q.double().t()).float()  # the pruned codes before compression: no decompress here
    want = ((acc * s[:, None]) * w_s[None, :] + bias).to(torch.bfloat16).reshape(m, 3, 24)
    assert_exact(out, want, what=f"sparse24_fp8_linear M={m} K={k}")
    # the same numbers as the dense FP8 op on the pruned weight
    assert_exact(out, ks.ops.fp8_linear(x, w_q, w_s, bias), what="sparse vs dense fp8")


def test_sparse24_fp8_linear_checks_and_gradient():
    w_q, values, meta, w_s = _sparse_fp8(16, 32)
    x = torch.randn(4, 32)
    with pytest.raises(TypeError, match="values must be float8_e4m3fn"):
        ks.ops.sparse24_fp8_linear(x, values.float(), meta, w_s, None)
    with pytest.raises(ValueError, match="meta is not 2:4 metadata"):
        ks.ops.sparse24_fp8_linear(x, values, torch.zeros_like(meta), w_s, None)
    with pytest.raises(ValueError, match="w_scale"):
        ks.ops.sparse24_fp8_linear(x, values, meta, w_s[:8], None)
    xg = x.clone().requires_grad_(True)
    y = torch.ops.kernelswap.sparse24_fp8_linear(xg, values, meta, w_s, None)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(xg.grad, g @ (w_q.float() * w_s[:, None]))
