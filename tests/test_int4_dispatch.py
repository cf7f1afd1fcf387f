"""int4_linear's "torch" backend (fast dequantize + cuBLAS, tinygemm) and the per-M dispatch.

CPU: the dequantize kernel under TRITON_INTERPRET=1 (fp16 / fp32; the interpreter rounds
fp32 -> bf16 toward zero, so bf16 exactness is checked on CUDA), the tinygemm format
mapping through torch's CPU tinygemm ops, and the dispatch table with a stand-in CUDA
device. CUDA: bf16 / fp16 / fp32 dequantize bit for bit, the tinygemm path and the
dequantize + cuBLAS path against a float64 computation within 2x the error of PyTorch's
own bf16 path (dequantize, cast, F.linear), and the dispatcher's real picks.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernelswap.ops import gemv_cuda, backend, int4, int4_tinygemm, int4_triton, mixed_cuda
from kernelswap.ops._cuda import sm90_reason
from kernelswap.ops.int4 import dequantize_int4_ref, unpack_int4
from kernelswap.packing import quantize_int4

from utils import assert_close_to_ref, assert_exact, interpreting, needs_cuda, needs_sm80

needs_interpreter = pytest.mark.skipif(not interpreting(), reason="CPU runs of Triton kernels need TRITON_INTERPRET=1")

# (N, K, group, symmetric): K never a multiple of the group, N not of the tiles.
DEQUANT_SHAPES = [(37, 100, 32, False), (45, 200, 64, True), (20, 300, 128, False), (1, 7, 32, False)]
_ids = lambda s: f"N{s[0]}-K{s[1]}-g{s[2]}-{'sym' if s[3] else 'asym'}"  # noqa: E731


def _quantized(n, k, group, symmetric, device):
    w = torch.randn(n, k, device=device)
    w[0] = 0.0  # a row of zeros: its scale must not turn into NaN
    return quantize_int4(w, group, symmetric)


def _check_dequant(shape, dtype, device, config=None):
    from kernelswap.kernels.w4a16_dequant import w4a16_dequant

    n, k, group, symmetric = shape
    q = _quantized(n, k, group, symmetric, device)
    out = w4a16_dequant(q.packed, q.scales, q.zeros, group, k, dtype, config=config)
    want = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)[:, :k].to(dtype)
    assert_exact(out, want, what=f"dequant {_ids(shape)} {dtype} {config}")


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape", DEQUANT_SHAPES, ids=_ids)
def test_dequant_kernel_exact_interpreted(shape, dtype):
    _check_dequant(shape, dtype, "cpu", config=dict(BLOCK_N=16, BLOCK_K=64, num_warps=4))


def test_dequantize_to_off_cuda_is_the_reference():
    q = _quantized(9, 50, 32, False, "cpu")
    out = int4.dequantize_int4_to(q.packed, q.scales, q.zeros, 32, 50, torch.bfloat16)
    assert_exact(out, dequantize_int4_ref(q.packed, q.scales, q.zeros, 32)[:, :50].to(torch.bfloat16))


# ---------------------------------------------------------------- tinygemm mapping
def test_tinygemm_codes_put_even_k_in_the_high_nibble():
    q = _quantized(8, 64, 32, False, "cpu")
    swapped = int4_tinygemm.tinygemm_codes(q.packed)
    hi_first = torch.stack((swapped >> 4, swapped & 0x0F), dim=-1).reshape(8, 64)
    assert_exact(hi_first, unpack_int4(q.packed))


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("group", [32, 128], ids=lambda g: f"g{g}")
def test_tinygemm_scales_and_zeros_through_torch_cpu_tinygemm(group, symmetric):
    """torch's CPU tinygemm reads scales_and_zeros as its CUDA kernel does: (q - 8) * s + zero."""
    n, k, m = 48, 256, 5  # the CPU packer wants N % 16 == 0
    q = _quantized(n, k, group, symmetric, "cpu")
    codes = unpack_int4(q.packed).to(torch.int32)  # the CPU packer takes unpacked int32 codes
    w_tg = torch._convert_weight_to_int4pack_for_cpu(codes, int4_tinygemm.inner_k_tiles(k))
    sz = int4_tinygemm.tinygemm_scales_and_zeros(q.scales, q.zeros)
    assert sz.shape == (k // group, n, 2) and sz.dtype == torch.bfloat16
    x = torch.randn(m, k).to(torch.bfloat16)
    out = torch._weight_int4pack_mm_for_cpu(x, w_tg, group, sz)
    w32 = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)
    assert_close_to_ref(out, x.double() @ w32.double().t(), F.linear(x, w32.to(torch.bfloat16)),
                        what=f"cpu tinygemm g{group}")


def test_inner_k_tiles():
    assert [int4_tinygemm.inner_k_tiles(kp) for kp in (4096, 1088, 544, 32, 48)] == [8, 4, 2, 2, None]


# ---------------------------------------------------------------- dispatch per M
class _FakeCudaX:
    """What the supports predicates read of x (shape, dtype, device), on a "cuda" device."""

    def __init__(self, m, k, dtype):
        self.shape, self.dtype, self.device = (m, k), dtype, torch.device("cuda")


# The documented routing (kernelswap.ops.int4_triton's docstring and thresholds), N % 8 == 0:
#   bf16  M 1..8 tinygemm | 9..16 gemm_small | 17..TORCH_FROM_M-1 gemm_large | dequant+cuBLAS
#   fp16  M 1..4 gemv     | 5..16 gemm_small | 17..TORCH_FROM_M-1 gemm_large | dequant+cuBLAS
#   fp32  M 1..4 gemv     | dequant+cuBLAS (no tensor-core fp32 dot)
ROUTES = [
    (torch.bfloat16, {0: "gemv", 1: "tinygemm", 8: "tinygemm", 9: "gemm_small", 16: "gemm_small",
                      17: "gemm_large", 2047: "gemm_large", 2048: "dequant", 4096: "dequant"}),
    (torch.float16, {1: "gemv", 4: "gemv", 5: "gemm_small", 16: "gemm_small", 17: "gemm_large",
                     2047: "gemm_large", 2048: "dequant"}),
    (torch.float32, {1: "gemv", 4: "gemv", 5: "dequant", 17: "dequant", 4096: "dequant"}),
]


def _route(x, w_packed, scales, zeros, group) -> str:
    """Which path the dispatcher takes, walking the registry as backend.choose does."""
    impl = backend.choose("int4_linear", x.device, x, w_packed, scales, zeros, group, None)
    if impl.backend == "triton":
        return int4_triton.pick_kernel(x.shape[0])
    return {"tinygemm_linear": "tinygemm", "_int4_linear_torch": "dequant"}.get(impl.fn.__name__, impl.fn.__name__)


@pytest.fixture
def fake_cuda_sm90(monkeypatch):
    """Every backend serves "cuda" and the device is sm_90: the predicates decide alone."""
    monkeypatch.setattr(backend, "_serves_device", lambda *args: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    # The table without the cuda decode GEMV and mixed-input GEMM (test_dispatch_per_m_cuda checks
    # them where _C has them).
    monkeypatch.setattr(gemv_cuda, "_build_reason", lambda: "left out of this routing table")
    monkeypatch.setattr(mixed_cuda, "_build_reason", lambda: "left out of this routing table")
    backend._candidates.cache_clear()  # the candidate list is cached per device type
    yield
    backend._candidates.cache_clear()


@pytest.mark.parametrize("dtype,routes", ROUTES, ids=["bf16", "fp16", "fp32"])
def test_dispatch_per_m(fake_cuda_sm90, dtype, routes):
    assert int4_triton.TORCH_FROM_M == 2048 and int4_tinygemm.TINYGEMM_M_MAX == 8, "update ROUTES with the table"
    q = quantize_int4(torch.randn(64, 256), 128)
    for m, want in routes.items():
        got = _route(_FakeCudaX(m, 256, dtype), q.packed, q.scales, q.zeros, 128)
        assert got == want, f"{dtype} M={m}: dispatched to {got}, documented {want}"


def test_tinygemm_declines_what_it_cannot_run(fake_cuda_sm90):
    q = quantize_int4(torch.randn(64, 256), 64)
    x = _FakeCudaX(1, 256, torch.bfloat16)
    assert int4_tinygemm.supports(x, q.packed, q.scales, q.zeros, 64, None) is None
    odd_n = quantize_int4(torch.randn(20, 256), 64)  # N not a multiple of tinygemm's n tile
    assert "multiple of" in int4_tinygemm.supports(x, odd_n.packed, odd_n.scales, odd_n.zeros, 64, None)
    assert _route(x, odd_n.packed, odd_n.scales, odd_n.zeros, 64) == "gemv"
    assert "bf16" in int4_tinygemm.supports(_FakeCudaX(1, 256, torch.float16), q.packed, q.scales, q.zeros, 64,
                                            None)
    assert "group size" in int4_tinygemm.supports(x, q.packed, q.scales, q.zeros, 48, None)
    assert "range" in int4_tinygemm.supports(_FakeCudaX(0, 256, torch.bfloat16), q.packed, q.scales, q.zeros,
                                             64, None)


def test_tinygemm_declines_before_sm80(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    q = quantize_int4(torch.randn(64, 256), 128)
    assert "sm_80" in int4_tinygemm.supports(_FakeCudaX(1, 256, torch.bfloat16), q.packed, q.scales, q.zeros,
                                             128, None)


# ------------------------------------------------------------------------------ CUDA
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("shape", DEQUANT_SHAPES + [(4096, 1000, 128, False)], ids=_ids)
def test_dequant_exact_cuda(shape, dtype):
    _check_dequant(shape, dtype, "cuda")
    n, k, group, symmetric = shape
    q = _quantized(n, k, group, symmetric, "cuda")
    assert_exact(int4.dequantize_int4_to(q.packed, q.scales, q.zeros, group, k, dtype),
                 dequantize_int4_ref(q.packed, q.scales, q.zeros, group)[:, :k].to(dtype), what="torch-path dequant")


def _problem_cuda(m, k, n, group, symmetric, dtype, with_bias):
    q = _quantized(n, k, group, symmetric, "cuda")
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    w32 = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)[:, :k]
    ref64 = x.double() @ w32.double().t() + (0 if bias is None else bias.double())
    return q, x, bias, ref64, F.linear(x, w32.to(dtype), bias)


# (K, N, group, symmetric): K a group multiple or not (x is padded), inner_k_tiles 8 / 4 / 2.
TINY_SHAPES = [(1000, 304, 128, False), (520, 64, 32, True), (4096, 512, 64, False), (1088, 136, 64, False)]


@needs_sm80  # tinygemm's kernels are sm_80+
@pytest.mark.parametrize("m", [1, 3, 8], ids=lambda m: f"M{m}")
@pytest.mark.parametrize("shape", TINY_SHAPES, ids=lambda s: f"K{s[0]}-N{s[1]}-g{s[2]}-{'sym' if s[3] else 'asym'}")
def test_tinygemm_path_cuda(shape, m):
    k, n, group, symmetric = shape
    q, x, bias, ref64, baseline = _problem_cuda(m, k, n, group, symmetric, torch.bfloat16, with_bias=m != 3)
    assert int4_tinygemm.supports(x, q.packed, q.scales, q.zeros, group, bias) is None
    before = len(int4_tinygemm._PREPARED)
    out = int4_tinygemm.tinygemm_linear(x, q.packed, q.scales, q.zeros, group, bias)
    again = int4_tinygemm.tinygemm_linear(x, q.packed, q.scales, q.zeros, group, bias)
    assert len(int4_tinygemm._PREPARED) == before + 1, "the converted weight is made once per weight buffer"
    assert_exact(again, out, what="second call (prepared weight)")
    assert_close_to_ref(out, ref64, baseline, what=f"tinygemm M={m} {shape}")
    # Through the public op with the torch backend forced (the decode GEMV of the cuda backend
    # comes first at M <= gemv_cuda.GEMV_UP_TO_M): tinygemm serves it and gives the same bits.
    with backend.use_backend("torch"):
        auto = torch.ops.kernelswap.int4_linear(x, q.packed, q.scales, q.zeros, group, bias)
    assert_exact(auto, out, what="public op at small M, bf16, torch backend")


@needs_sm80
def test_tinygemm_layout_only_where_it_can_be_chosen(monkeypatch):
    """Where the W4A16 GEMV serves every M tinygemm would, prepare makes no tinygemm copy of the weight
    (forcing the torch backend does); a call that would pick tinygemm inside capture without its layout
    (K % 8 != 0: the GEMV declines) goes to the next backend instead of making it in the graph's pool."""
    q, x, bias, ref64, baseline = _problem_cuda(1, 100, 64, 32, False, torch.bfloat16, with_bias=False)
    sources = (q.packed, q.scales, q.zeros)
    backend.prepare_weights("int4_linear", q.packed, q.scales, q.zeros, 32, None)
    gemv_first = gemv_cuda.int4_serves_up_to(q.packed) >= int4_tinygemm.TINYGEMM_M_MAX
    assert int4_tinygemm._PREPARED.holds(sources) != gemv_first
    capturing = {"on": True}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing["on"])
    if not gemv_first:  # no GEMV here: the layout was prepared, and tinygemm serves inside capture too
        assert int4_tinygemm.supports(x, q.packed, q.scales, q.zeros, 32, None) is None
        return
    assert isinstance(int4_tinygemm.supports(x, q.packed, q.scales, q.zeros, 32, None), backend.Transient)
    chosen = backend.choose("int4_linear", x.device, x, q.packed, q.scales, q.zeros, 32, None)
    assert chosen.fn is not int4_tinygemm.tinygemm_linear
    out = chosen.fn(x, q.packed, q.scales, q.zeros, 32, None)
    assert not int4_tinygemm._PREPARED.holds(sources)
    assert_close_to_ref(out, ref64, baseline, what="int4 K=100 M=1 without the tinygemm layout")
    capturing["on"] = False
    with backend.use_backend("torch"):
        backend.prepare_weights("int4_linear", q.packed, q.scales, q.zeros, 32, None)
    assert int4_tinygemm._PREPARED.holds(sources)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("m", [0, 1, 33, 600], ids=lambda m: f"M{m}")
def test_dequant_cublas_path_cuda(m, dtype):
    q, x, bias, ref64, baseline = _problem_cuda(m, 1000, 300, 128, False, dtype, with_bias=True)
    out = int4._int4_linear_torch(x, q.packed, q.scales, q.zeros, 128, bias)
    assert out.dtype == dtype and out.shape == (m, 300)
    assert_close_to_ref(out, ref64, baseline, what=f"dequant+cuBLAS M={m} {dtype}")


def _with_gemv(dtype, routes: dict) -> dict:
    """The table on a device where the cuda decode GEMV serves (bf16 / fp16, M <= its crossover)."""
    if dtype == torch.float32:
        return routes
    up_to = gemv_cuda.GEMV_UP_TO_M["int4_linear"]
    out = {m: ("_int4_gemv" if m <= up_to else r) for m, r in routes.items()}
    out[up_to + 1] = routes[max(m for m in routes if m <= up_to + 1)]  # the table's path there
    return out


def _with_mixed(dtype, routes: dict) -> dict:
    """The table on an sm_90 device whose _C has the mixed-input GEMM (bf16, in its M window)."""
    if dtype != torch.bfloat16:  # the one x type instantiated
        return routes
    lo, hi = mixed_cuda.MIXED_M["int4_linear"]
    return {m: ("_int4_mm" if lo <= m < hi else r) for m, r in routes.items()}


@needs_sm80  # the table is for sm_80+ (tinygemm); Triton is a GPU dependency of the package
@pytest.mark.parametrize("dtype,routes", ROUTES, ids=["bf16", "fp16", "fp32"])
def test_dispatch_per_m_cuda(dtype, routes):
    """The real device: the same table as on CPU, with the cuda GEMV first where the build has it, and
    the mixed-input GEMM from its M on where the build and GPU have it."""
    assert backend.backend_status("triton")[0], backend.backend_status("triton")[1]
    q = quantize_int4(torch.randn(64, 256, device="cuda"), 128)
    if gemv_cuda._build_reason() is None:
        routes = _with_gemv(dtype, routes)
    if mixed_cuda._build_reason() is None and sm90_reason(torch.cuda.current_device()) is None:
        routes = _with_mixed(dtype, routes)
    for m, want in routes.items():
        x = torch.empty(m, 256, device="cuda", dtype=dtype)
        assert _route(x, q.packed, q.scales, q.zeros, 128) == want, f"{dtype} M={m}"
