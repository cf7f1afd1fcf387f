"""The large-M swap-AB modes of the mixed-input GEMMs (issue 13): out^T = W x^T with the
converted weight tile as the dot's left operand.

  W8A16  kernels/int8_gemm.py's kernel with SWAP_AB (w8a16_gemm.w8a16_large_m_configs)
  W4A16  kernels/w4a16_gemm.py's kernel with SWAP_AB (w4a16_gemm.large_m_configs)

CPU: under TRITON_INTERPRET=1 with fp16 (the interpreter cannot run a bf16 tl.dot), small
swapped tiles at awkward shapes: M not a multiple of the token tile, K with a tail (and for
int4 not a multiple of the group), N odd; pointer and TMA loads, with and without bias,
groups 32 / 64 / 128 symmetric and asymmetric. Each output against float64 within 2x the
error of PyTorch's own same-precision layer, and against the reference op. CUDA: every
large-M config of both lists, bf16, at an M that is not a multiple of any tile.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from kernelswap.ops.int4 import dequantize_int4_ref, int4_linear_ref
from kernelswap.ops.int8 import int8_weight_linear_ref
from kernelswap.packing import quantize_int4

from utils import assert_close_to_ref, kernel_device, needs_kernel_device

DEV = kernel_device()
pytestmark = needs_kernel_device

from kernelswap.kernels import w4a16_gemm, w8a16_gemm  # noqa: E402

ON_CPU = DEV == "cpu"
DTYPE = torch.float16 if ON_CPU else torch.bfloat16


def _swap_tile(bm, bn, bk, stages=2, warps=4):
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2, SWAP_AB=True, num_warps=warps, num_stages=stages)


def _as_dict(c):
    return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}


# ---------------------------------------------------------------- W8A16
def _w8a16_problem(m, k, n, bias):
    x = torch.randn(m, k, device=DEV).to(DTYPE)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=DEV)
    w_s = torch.rand(n, device=DEV) * 1e-2 + 1e-4
    b = torch.randn(n, device=DEV).to(DTYPE) if bias else None
    ref64 = (x.double() @ w.double().t()) * w_s.double() + (0 if b is None else b.double())
    baseline = F.linear(x, w.to(DTYPE) * w_s.to(DTYPE)[:, None], b)
    return x, w, w_s, b, ref64, baseline


def _check_w8a16(out, x, w, w_s, b, ref64, baseline, what):
    assert out.dtype == x.dtype and out.shape == ref64.shape
    assert_close_to_ref(out, ref64, baseline, what=what)
    # The reference accumulates in fp32 too: both land within one rounding of x.dtype.
    assert_close_to_ref(out, ref64, int8_weight_linear_ref(x, w, w_s, b), factor=4.0, what=f"{what} vs reference")


# (m, k, n, tile, use_tma): K 100 has a tail in every BLOCK_K, 64 is EVEN_K; N odd; M not a tile multiple.
W8A16_CPU = [
    (17, 100, 45, _swap_tile(16, 32, 32), False),
    (40, 64, 37, _swap_tile(32, 16, 64), False),
    (3, 100, 33, _swap_tile(16, 16, 64), False),
    (21, 208, 45, _swap_tile(16, 32, 64), True),  # TMA: K * 2 bytes a multiple of 16
]


@pytest.mark.skipif(not ON_CPU, reason="the interpreted cases (the GPU runs every config below)")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("m,k,n,tile,tma", W8A16_CPU,
                         ids=lambda v: "x".join(map(str, (v["BLOCK_M"], v["BLOCK_N"], v["BLOCK_K"])))
                         if isinstance(v, dict) else str(v))
def test_w8a16_swap_interpreted(m, k, n, tile, tma, bias):
    x, w, w_s, b, ref64, baseline = _w8a16_problem(m, k, n, bias)
    out = w8a16_gemm.int8_weight_linear(x, w, w_s, b, split_k=1, use_tma=tma, config=tile)
    _check_w8a16(out, x, w, w_s, b, ref64, baseline, f"w8a16 swap {m}x{k}x{n} tma={tma}")


@pytest.mark.skipif(ON_CPU, reason="CUDA: every large-M config")
@pytest.mark.parametrize("m", [300, 1000])
def test_w8a16_every_large_config_cuda(m):
    x, w, w_s, b, ref64, baseline = _w8a16_problem(m, 1040, 520, True)
    for c in w8a16_gemm.w8a16_large_m_configs():
        out = w8a16_gemm.int8_weight_linear(x, w, w_s, b, split_k=1, config=_as_dict(c))
        _check_w8a16(out, x, w, w_s, b, ref64, baseline, f"w8a16 M={m} {_as_dict(c)}")


def test_w8a16_swap_is_w8a16_only():
    x = torch.randint(-127, 128, (4, 32), dtype=torch.int8, device=DEV)
    w = torch.randint(-127, 128, (16, 32), dtype=torch.int8, device=DEV)
    s = torch.ones(16, device=DEV)
    from kernelswap.kernels.int8_gemm import int8_scaled_mm
    with pytest.raises(AssertionError, match="W8A16 mode"):
        int8_scaled_mm(x, torch.ones(4, device=DEV), w, s, None, torch.float16, split_k=1, config=_swap_tile(16, 16, 32))


# ---------------------------------------------------------------- W4A16
def _w4a16_problem(m, k, n, group, symmetric, bias):
    w = torch.randn(n, k, device=DEV)
    w[1] = 0.0  # an all-zero row: its scale must not become NaN
    q = quantize_int4(w, group, symmetric)
    x = torch.randn(m, k, device=DEV).to(DTYPE)
    b = torch.randn(n, device=DEV).to(DTYPE) if bias else None
    w32 = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)[:, :k]
    ref64 = x.double() @ w32.double().t() + (0 if b is None else b.double())
    return x, q, b, ref64, F.linear(x, w32.to(DTYPE), b)


# (m, k, n, group, symmetric, tile): K never a multiple of the group; tiles narrower and
# wider than the group along K; N odd; M not a multiple of the token tile.
W4A16_CPU = [
    (17, 100, 45, 32, False, _swap_tile(16, 32, 32)),
    (33, 200, 37, 32, True, _swap_tile(32, 16, 64)),
    (21, 130, 29, 64, False, _swap_tile(16, 16, 128)),
    (40, 200, 45, 64, True, _swap_tile(32, 32, 32)),
    (19, 300, 33, 128, False, _swap_tile(16, 32, 64)),
    (18, 129, 31, 128, True, _swap_tile(16, 16, 128)),
]


@pytest.mark.skipif(not ON_CPU, reason="the interpreted cases (the GPU runs every config below)")
@pytest.mark.parametrize("m,k,n,group,symmetric,tile", W4A16_CPU,
                         ids=[f"{c[0]}x{c[1]}x{c[2]}-g{c[3]}-{'sym' if c[4] else 'asym'}" for c in W4A16_CPU])
def test_w4a16_swap_interpreted(m, k, n, group, symmetric, tile):
    x, q, b, ref64, baseline = _w4a16_problem(m, k, n, group, symmetric, bias=True)
    out = w4a16_gemm.w4a16_gemm(x, q.packed, q.scales, q.zeros, group, b, small_m=False, config={**tile, "SPLIT_K": 1})
    assert out.dtype == x.dtype
    assert_close_to_ref(out, ref64, baseline, what=f"w4a16 swap {m}x{k}x{n} g{group}")
    ref = int4_linear_ref(x, q.packed, q.scales, q.zeros, group, b)
    assert_close_to_ref(out, ref64, ref, factor=4.0, what="w4a16 swap vs reference")


@pytest.mark.skipif(ON_CPU, reason="CUDA: every large-M config")
@pytest.mark.parametrize("group,symmetric", [(32, True), (64, False), (128, False), (128, True)])
def test_w4a16_every_large_config_cuda(group, symmetric):
    x, q, b, ref64, baseline = _w4a16_problem(300, 1000, 520, group, symmetric, bias=True)
    for c in w4a16_gemm.large_m_configs():
        out = w4a16_gemm.w4a16_gemm(x, q.packed, q.scales, q.zeros, group, b, small_m=False, config=_as_dict(c))
        assert_close_to_ref(out, ref64, baseline, what=f"w4a16 g{group} {_as_dict(c)}")


# ---------------------------------------------------------------- the config lists
H100_SMEM = 232448  # opt-in shared memory per block of an H100 / H200 (the guard reads the device's own)


@pytest.mark.parametrize("which", ["w8a16", "w4a16"])
def test_large_m_swap_configs_fit_hopper(which):
    """The swapped configs are the shape issue 13 asks for, and each fits a Hopper SM's
    shared memory (one that never fits would be dead weight in every tuning run)."""
    if which == "w8a16":
        configs, smem = w8a16_gemm.w8a16_large_m_configs(), dict(a_ptr=2, b_ptr=1)
        rows = (("BLOCK_M", "a_ptr"), ("BLOCK_N", "b_ptr"))
    else:
        configs, smem = w4a16_gemm.large_m_configs(), dict(x=2, w_packed=0.5)
        rows = (("BLOCK_M", "x"), ("BLOCK_N", "w_packed"))
    swapped = [c for c in configs if c.kwargs.get("SWAP_AB")]
    assert len(swapped) >= 4
    for c in swapped:
        kw = c.kwargs
        assert kw["BLOCK_N"] == 128 and 64 <= kw["BLOCK_M"] <= 256 and kw["BLOCK_K"] in (64, 128), kw
        assert c.num_stages in (3, 4) and c.num_warps in (4, 8), c
        per_stage = sum(kw[r] * kw["BLOCK_K"] * smem[arg] for r, arg in rows)
        assert per_stage * c.num_stages <= H100_SMEM, (kw, per_stage * c.num_stages)


# ---------------------------------------------------------------- the lowering itself
_A_OPERAND = re.compile(r"warp_group_dot .*?:\s+(tensor<|!\w+\.memdesc<)")


def _sm90() -> bool:
    return DEV == "cuda" and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.skipif(not _sm90(), reason="wgmma: an sm_90 GPU")
@pytest.mark.parametrize("which", ["w8a16", "w4a16"])
def test_swap_tiles_feed_wgmma_from_registers(which, monkeypatch):
    """The point of SWAP_AB: in the compiled kernel (its TTGIR) the weight operand of every
    warp_group_dot is a register tensor (a dot_op layout), not a shared-memory descriptor."""
    from kernelswap.kernels import _launch

    monkeypatch.setattr(_launch, "ENABLED", True)  # the fast path keeps the compiled kernel to read
    _launch.clear()
    if which == "w8a16":
        config = next(_as_dict(c) for c in w8a16_gemm.w8a16_large_m_configs() if c.kwargs.get("SWAP_AB"))
        x, w, w_s, b, _, _ = _w8a16_problem(256, 1024, 512, False)
        w8a16_gemm.int8_weight_linear(x, w, w_s, b, split_k=1, config=config)
    else:
        config = next(_as_dict(c) for c in w4a16_gemm.large_m_configs() if c.kwargs.get("SWAP_AB"))
        x, q, b, _, _ = _w4a16_problem(256, 1024, 512, 128, False, bias=False)
        w4a16_gemm.w4a16_gemm(x, q.packed, q.scales, q.zeros, 128, b, small_m=False, config=config)
    ttgirs = [hit[0].asm["ttgir"] for hit in _launch._CACHE.values() if isinstance(hit, tuple)]
    gemms = [t for t in ttgirs if "_gemm_kernel" in t or "warp_group_dot" in t]
    assert gemms, f"{which}: no GEMM kernel was launched through kernels/_launch"
    operands = [m.group(1) for t in gemms for m in _A_OPERAND.finditer(t)]
    assert operands, f"no warp_group_dot in the TTGIR of {which} {config}: not lowered to wgmma"
    assert all(o == "tensor<" for o in operands), (
        f"{which} {config}: the weight operand of warp_group_dot comes from shared memory ({operands}); "
        + next(line.strip() for t in gemms for line in t.splitlines() if "warp_group_dot " in line))
