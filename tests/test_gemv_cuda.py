"""Decode GEMVs of the CUDA extension (csrc/gemv, kernelswap.ops.gemv_cuda).

CPU (CI): the swap-time layouts (kernelswap.ops.gemv_layout) round-trip to the public packed
formats, and an emulator written from the PTX fragment rules (not from gemv_layout's maps)
decodes each lane's 16 bytes the way the kernel does and gets the public weights back; another
computes x @ w.T through the int8 row formats' loads and fragments; the supports predicates
refuse what the kernels cannot take. GPU: the public ops with the cuda
backend forced, against the references: W8A8 bit-exact, W4A16 / W8A16 within 2x the error
of the same computation in x.dtype torch; M in {0, 1, 2, 7, 16, 33, 64}, K not a multiple of
128 (groups 32 / 64), N odd, bf16 and fp16, split-K and not, the int8 GEMVs on the layer's own
weight and on the prepared copy; determinism; a CUDA graph replay.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernelswap
from kernelswap import _ext
from kernelswap.ops import backend, gemv_cuda, gemv_layout as L
from kernelswap.ops.int4 import dequantize_int4_ref, unpack_int4
from kernelswap.ops.int8 import int8_linear_ref
from kernelswap.packing import quantize_int4

from utils import assert_close_to_ref, assert_exact, assert_repeats_and_replays

# (N, K, group): N odd or not a multiple of 16; K below one batch, not a multiple of 128 or 256.
INT4_SHAPES = [(37, 96, 32), (45, 200, 64), (16, 256, 128), (70, 700, 32)]
INT8_SHAPES = [(37, 96), (45, 200), (70, 520)]


def _ops_built() -> bool:
    return _ext.load() and hasattr(torch.ops.kernelswap, "_C_int4_gemv")


def _gpu_ready() -> bool:
    return torch.cuda.is_available() and gemv_cuda._device_reason(torch.cuda.current_device()) is None


needs_gemv = pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and a kernelswap._C with the GEMVs")
needs_ops = pytest.mark.skipif(not _ops_built(), reason="kernelswap._C without the GEMVs (not built)")


# ---------------------------------------------------------------- CPU: layouts
def _padded(codes: torch.Tensor, pad: int) -> torch.Tensor:
    n, k = codes.shape
    return F.pad(codes, (0, -k % 256, 0, -n % 16), value=pad)


def _words(w: torch.Tensor) -> torch.Tensor:
    """(tiles, bytes) -> (tiles, chunks, 32 lanes, 4) little-endian 32-bit words, as int64."""
    b = w.view(w.shape[0], -1, 32, 4, 4).long()
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def _emulate(w: torch.Tensor, fmt: str, n_pad: int, k_pad: int) -> torch.Tensor:
    """Decode the kernel's loads into the dense (n_pad, k_pad) codes, register by register.

    PTX mma fragments of A (lane = 4 g + t): m16n8k16 element i of a thread (register i // 2):
    row g + 8 * ((i // 2) % 2), col 2 t + i % 2 + 8 * (i // 4); m16n8k32 int8 element i
    (register i // 4): row g + 8 * ((i // 4) % 2), col 4 t + i % 4 + 16 * (i // 8)."""
    words = _words(w)
    tiles, chunks = words.shape[:2]
    out = torch.full((tiles, 16, chunks, 64 if fmt == "int4" else 32), -1, dtype=torch.long)
    lane = torch.arange(32)
    g, t = lane // 4, lane % 4
    if fmt == "int4":  # word j = k16 step j; register p = ((word >> 4p) & 0x000F000F)
        for j in range(4):
            for p in range(4):
                for half in range(2):
                    v = (words[:, :, :, j] >> (4 * p + 16 * half)) & 0xF
                    i = 2 * p + half
                    out[:, g + 8 * ((i // 2) % 2), :, 16 * j + 2 * t + i % 2 + 8 * (i // 4)] = v.permute(2, 0, 1)
    elif fmt == "int8_w16":  # step s: register p = bytes 2 (p % 2), +1 of word 2 s + p // 2, minus 128
        for s in range(2):
            for p in range(4):
                for e in range(2):
                    v = ((words[:, :, :, 2 * s + p // 2] >> (8 * (2 * (p % 2) + e))) & 0xFF) - 128
                    i = 2 * p + e
                    out[:, g + 8 * ((i // 2) % 2), :, 16 * s + 2 * t + i % 2 + 8 * (i // 4)] = v.permute(2, 0, 1)
    else:  # int8_w8: register r = word r, signed bytes
        for r in range(4):
            for e in range(4):
                v = (words[:, :, :, r] >> (8 * e)) & 0xFF
                v = torch.where(v >= 128, v - 256, v)
                i = 4 * r + e
                out[:, g + 8 * ((i // 4) % 2), :, 4 * t + i % 4 + 16 * (i // 8)] = v.permute(2, 0, 1)
    assert (out >= -128).all(), "a position of the tile was never written"
    return out.reshape(tiles * 16, chunks * out.shape[-1])[:n_pad, :k_pad]


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("n,k,group", INT4_SHAPES)
def test_int4_layout(n, k, group, symmetric):
    q = quantize_int4(torch.randn(n, k), group, symmetric)
    kp = q.packed.shape[1] * 2
    w, s, z = L.int4_to_gemv(q.packed, q.scales, q.zeros, group)
    n_pad, k_pad = -(-n // 16) * 16, -(-kp // 256) * 256
    assert w.shape == (n_pad // 16, k_pad // 256 * 2048) and w.dtype == torch.uint8
    assert s.shape == (n_pad // 16, k_pad // group * 16) and s.dtype == torch.float16
    assert (z is None) == symmetric
    # The kernel's reading of the loads gives the public codes back (padding: the symmetric zero).
    assert torch.equal(_emulate(w, "int4", n_pad, k_pad), _padded(unpack_int4(q.packed), 8).long())
    # One 32-bit load of scales (16-bit of zeros) = (row g, row g + 8) of a tile's group.
    sv = s.view(n_pad // 16, -1, 8, 2)
    tile, grp, g = 1 if n_pad > 16 else 0, 1, 5
    assert sv[tile, grp, g, 0] == q.scales[16 * tile + g, grp]
    if 16 * tile + g + 8 < n:
        assert sv[tile, grp, g, 1] == q.scales[16 * tile + g + 8, grp]
    assert (sv.reshape(n_pad // 16, -1, 16)[:, kp // group:] == 0).all(), "padding groups must have scale 0"
    back = L.int4_from_gemv(w, s, z, n, kp, group)
    assert torch.equal(back[0], q.packed) and torch.equal(back[1], q.scales)
    assert symmetric or torch.equal(back[2], q.zeros)


@pytest.mark.parametrize("activations_int8", [True, False], ids=["w8a8", "w8a16"])
@pytest.mark.parametrize("n,k", INT8_SHAPES)
def test_int8_layout(n, k, activations_int8):
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    w = L.int8_to_gemv(w_q, activations_int8)
    n_pad, k_pad = -(-n // 16) * 16, -(-k // 256) * 256
    assert w.shape == (n_pad // 16, k_pad // 256 * 4096)
    dense = _emulate(w, "int8_w8" if activations_int8 else "int8_w16", n_pad, k_pad)
    assert torch.equal(dense, _padded(w_q.long(), 0))  # padding decodes to q = 0
    assert torch.equal(L.int8_from_gemv(w, n, k, activations_int8), w_q)


def _emulate_rows(w_q: torch.Tensor, x: torch.Tensor, w8a8: bool, x_shift: int = 0) -> torch.Tensor:
    """x @ w_q.T through the row formats' loads and MMA fragments (csrc/gemv/gemv_stream.cuh RowStream,
    gemv_formats_rows.cuh), register by register, from the PTX fragment rules (see _emulate):
    lane (g, t) loads 16 bytes of rows g and g + 8 at K 256 b + 64 c + 16 t (zero past K, rows past
    N clamped); W8A8 step (c, h) takes words 2h, 2h + 1 into A regs (0, 2) of row g and (1, 3) of
    row g + 8 and x at K + 8 h; W8A16 step (c, j) takes word j's bytes (0, 1) / (2, 3) and x at
    K + 4 j. x_shift moves every x read by that many K (a wrong mapping the test must catch)."""
    n, k = w_q.shape
    m = x.shape[0]
    xp = F.pad(x.double(), (0, 512 + x_shift))  # reads past K see zeros, as the kernel's staging
    out = torch.zeros(m, n, dtype=torch.float64)
    for tile in range(-(-n // 16)):
        rows = [min(16 * tile + r, n - 1) for r in range(16)]
        for b in range(-(-k // 256)):
            for c in range(4):
                for sub in (range(2) if w8a8 else range(4)):
                    a = torch.zeros(16, 32 if w8a8 else 16, dtype=torch.float64)
                    bm = torch.zeros(a.shape[1], m, dtype=torch.float64)
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        k0 = 256 * b + 64 * c + 16 * t
                        load = [w_q[rows[r], k0:k0 + 16].double() if k0 < k else torch.zeros(16, dtype=torch.float64)
                                for r in (g, g + 8)]
                        if w8a8:  # m16n8k32: A[g][4t + i] = reg 0 byte i, A[g + 8] reg 1, + 16: regs 2, 3
                            for reg in range(4):  # reg r: row g + 8 (r % 2), word 2 sub + r // 2
                                word, col = 2 * sub + reg // 2, 16 * (reg // 2) + 4 * t
                                a[g + 8 * (reg % 2), col:col + 4] = load[reg % 2][4 * word:4 * word + 4]
                            kx = k0 + 8 * sub + x_shift  # B[4t + i] = b0 byte i, B[16 + 4t + i] = b1
                            bm[4 * t:4 * t + 4] = xp[:, kx:kx + 4].t()
                            bm[16 + 4 * t:16 + 4 * t + 4] = xp[:, kx + 4:kx + 8].t()
                        else:  # m16n8k16: A[g][2t + i] = reg 0 half i, A[g + 8] reg 1, + 8: regs 2, 3
                            for reg in range(4):  # reg r: row g + 8 (r % 2), bytes 2 (r // 2), + 1 of word sub
                                byte, col = 4 * sub + 2 * (reg // 2), 8 * (reg // 2) + 2 * t
                                a[g + 8 * (reg % 2), col:col + 2] = load[reg % 2][byte:byte + 2]
                            kx = k0 + 4 * sub + x_shift  # B[2t + i] = b0 half i, B[8 + 2t + i] = b1
                            bm[2 * t:2 * t + 2] = xp[:, kx:kx + 2].t()
                            bm[8 + 2 * t:8 + 2 * t + 2] = xp[:, kx + 2:kx + 4].t()
                    d = a @ bm  # (16 rows, M tokens)
                    for r in range(16):
                        if 16 * tile + r < n:
                            out[:, 16 * tile + r] += d[r]
    return out


@pytest.mark.parametrize("w8a8", [True, False], ids=["w8a8", "w8a16"])
@pytest.mark.parametrize("n,k", [(37, 96), (20, 272)])  # N past a tile, K past a batch, K % 64 != 0
def test_row_formats_fragment_mapping(n, k, w8a8):
    """The row formats' reading of the (N, K) int8 weight (emulated lane by lane) gives x @ w.T exactly;
    reading x 16 values off does not (the emulation can tell a wrong mapping)."""
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    x = torch.randint(-127, 128, (3, k)).double()
    exact = x @ w_q.double().t()
    assert torch.equal(_emulate_rows(w_q, x, w8a8), exact)
    assert not torch.equal(_emulate_rows(w_q, x, w8a8, x_shift=16), exact)


def test_counters():
    assert L.counters(28672, "cpu").shape == (448,)
    assert L.counters(37, "cpu").shape == (1,) and not L.counters(65, "cpu").any()


def test_supports_reasons_on_cpu():
    """Shapes the kernels cannot take are refused before the extension is reached."""
    x = torch.randn(4, 100, dtype=torch.bfloat16)
    assert "multiple of 8" in gemv_cuda._reason(x, "int4_linear")
    assert "float32" in gemv_cuda._reason(torch.randn(4, 128), "int4_linear")
    assert "M=65" in gemv_cuda._reason(torch.randn(65, 128, dtype=torch.float16), "int4_linear")
    # Without the built ops (CI) every call is refused with that reason; with them, CPU tensors are.
    why = gemv_cuda._reason(torch.randn(4, 128, dtype=torch.bfloat16), "int4_linear")
    assert ("kernelswap._C" in why) if gemv_cuda._build_reason() else ("CUDA" in why)
    w = torch.zeros(8, 1 << 18, dtype=torch.int8)
    assert "exact" in gemv_cuda._int8_supports_for("int8_linear")(torch.zeros(1, 1 << 18, dtype=torch.bfloat16), w, None, None)


# ---------------------------------------------------------------- GPU: against the references
M_VALUES = [1, 2, 7, 16, 33, 64]
DTYPES = [torch.bfloat16, torch.float16]
ids = lambda v: {torch.float16: "fp16", torch.bfloat16: "bf16"}[v]  # noqa: E731
# On the GPU: a single-split shape (K <= 511), split-K shapes, K not a multiple of 128 or 256.
GPU_INT4 = [(37, 96, 32), (1001, 2080, 32), (4097, 4160, 64), (300, 4096, 128)]
GPU_INT8 = [(37, 96), (1001, 2088), (1001, 2064), (4097, 4096)]  # 2088: K % 16 != 0 (prepared layout only)


@pytest.fixture(params=["rows", "prepared"])
def int8_layout(request, monkeypatch):
    """Both int8 GEMV weight sources: the layer's own (N, K) weight and gemv_layout's prepared copy."""
    monkeypatch.setattr(gemv_cuda, "INT8_ROW_MAJOR", request.param == "rows")
    return request.param


def _check_int8_source(activations_int8, w_q, w_s, bias, layout):
    rows = gemv_cuda._int8_prepared(activations_int8, w_q, w_s, bias).w is None
    assert rows == (layout == "rows" and w_q.shape[1] % 16 == 0)


def _x(m, k, dtype):
    return torch.randn(m, k, device="cuda").to(dtype)


@needs_gemv
@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("n,k,group", GPU_INT4)
@pytest.mark.parametrize("m", M_VALUES)
def test_int4_gemv(m, n, k, group, symmetric, dtype):
    w = torch.randn(n, k, device="cuda")
    w[0] = 0.0
    q = quantize_int4(w, group, symmetric)
    x, bias = _x(m, k, dtype), torch.randn(n, device="cuda").to(dtype)
    with kernelswap.use_backend("cuda"):
        out = kernelswap.ops.int4_linear(x, q.packed, q.scales, q.zeros, group, bias)
    w32 = dequantize_int4_ref(q.packed, q.scales, q.zeros, group)[:, :k]
    ref64 = x.double() @ w32.double().t() + bias.double()
    assert out.dtype == dtype
    assert_close_to_ref(out, ref64, F.linear(x, w32.to(dtype), bias), what=f"int4 gemv m={m} n={n} k={k}")


@needs_gemv
@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("n,k", GPU_INT8)
@pytest.mark.parametrize("m", M_VALUES)
def test_w8a16_gemv(m, n, k, dtype, int8_layout):
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    w_s = torch.rand(n, device="cuda") * 1e-2 + 1e-4
    x, bias = _x(m, k, dtype), torch.randn(n, device="cuda").to(dtype)
    with kernelswap.use_backend("cuda"):
        out = kernelswap.ops.int8_weight_linear(x, w_q, w_s, bias)
    _check_int8_source(False, w_q, w_s, bias, int8_layout)
    ref64 = (x.double() @ w_q.double().t()) * w_s.double() + bias.double()
    baseline = F.linear(x, w_q.to(dtype) * w_s.to(dtype)[:, None], bias)
    assert_close_to_ref(out, ref64, baseline, what=f"w8a16 gemv m={m} n={n} k={k}")


@needs_gemv
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("n,k", GPU_INT8)
@pytest.mark.parametrize("m", M_VALUES)
def test_w8a8_gemv_exact(m, n, k, dtype, with_bias, int8_layout):
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    w_s = torch.rand(n, device="cuda") * 1e-2 + 1e-4
    x = _x(m, k, dtype) * torch.logspace(-2, 2, m, device="cuda").to(dtype)[:, None]
    if m > 2:
        x[1] = 0  # all-zero row: scale 0
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    with kernelswap.use_backend("cuda"):
        out = kernelswap.ops.int8_linear(x, w_q, w_s, bias)
    _check_int8_source(True, w_q, w_s, bias, int8_layout)
    ref = int8_linear_ref(x.cpu(), w_q.cpu(), w_s.cpu(), None if bias is None else bias.cpu())
    assert_exact(out.cpu(), ref, what=f"w8a8 gemv m={m} n={n} k={k}")


@needs_gemv
@pytest.mark.parametrize("activations_int8", [True, False], ids=["w8a8", "w8a16"])
def test_int8_gemv_keeps_no_copy_of_the_weight(activations_int8):
    """Where K % 16 == 0 the int8 GEMVs read the layer's (N, K) weight: what they prepare beside it is
    its fp32 scales, the bias and the counters, not a second weight; a K % 16 != 0 weight gets the copy."""
    from kernelswap.ops._prepared import prepared_bytes

    prepare = gemv_cuda._w8a8_prepare if activations_int8 else gemv_cuda._w8a16_prepare
    for k, copy in ((1024, False), (1032, True)):
        w_q = torch.randint(-127, 128, (512, k), dtype=torch.int8, device="cuda")
        w_s = torch.rand(512, device="cuda")
        prepare(w_q, w_s, None)
        held = prepared_bytes([w_q])
        assert (held >= w_q.numel()) == copy, f"K={k}: {held} bytes prepared beside a {w_q.numel()}-byte weight"


@needs_gemv
def test_w8a8_nan_and_inf_rows_match_reference():
    n, k = 45, 264
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    w_s = torch.rand(n, device="cuda")
    x = _x(4, k, torch.bfloat16)
    x[1, 7] = float("nan")
    x[2, 100] = float("inf")
    with kernelswap.use_backend("cuda"):
        out = kernelswap.ops.int8_linear(x, w_q, w_s, None)
    assert_exact(out.cpu(), int8_linear_ref(x.cpu(), w_q.cpu(), w_s.cpu(), None), what="w8a8 NaN / inf rows")


@needs_gemv
def test_offset_x_is_refused():
    offset = torch.randn(4 * 128 + 4, dtype=torch.bfloat16, device="cuda")[4:].view(4, 128)  # 8 bytes past aligned
    assert "aligned" in gemv_cuda._reason(offset, "int4_linear")


@needs_gemv
def test_empty_m_and_leading_dims():
    q = quantize_int4(torch.randn(40, 128, device="cuda"), 32)
    with kernelswap.use_backend("cuda"):
        assert kernelswap.ops.int4_linear(torch.empty(0, 128, device="cuda", dtype=torch.bfloat16), q.packed,
                                          q.scales, q.zeros, 32, None).shape == (0, 40)
        x = _x(6, 128, torch.bfloat16).view(2, 3, 128)
        out = kernelswap.ops.int4_linear(x, q.packed, q.scales, q.zeros, 32, None)
    assert out.shape == (2, 3, 40)


@needs_gemv
def test_dispatch_and_prepare():
    """Not forced, the GEMV serves M <= GEMV_UP_TO_M; prepare_weights fills its cache first."""
    q = quantize_int4(torch.randn(256, 512, device="cuda"), 64)
    before = len(gemv_cuda._INT4)
    backend.prepare_weights("int4_linear", q.packed, q.scales, q.zeros, 64, None)
    assert len(gemv_cuda._INT4) == before + 1
    x = _x(gemv_cuda.GEMV_UP_TO_M["int4_linear"], 512, torch.bfloat16)
    assert backend.choose("int4_linear", x.device, x, q.packed, q.scales, q.zeros, 64, None).fn is gemv_cuda._int4_gemv
    x = _x(gemv_cuda.GEMV_UP_TO_M["int4_linear"] + 1, 512, torch.bfloat16)
    assert backend.choose("int4_linear", x.device, x, q.packed, q.scales, q.zeros, 64, None).fn is not \
        gemv_cuda._int4_gemv
    w_q = torch.randint(-127, 128, (256, 512), dtype=torch.int8, device="cuda")
    x = _x(1, 512, torch.float16)
    assert backend.choose("int8_linear", x.device, x, w_q, torch.rand(256, device="cuda"), None).fn is \
        gemv_cuda._int8_gemv


@needs_gemv
@pytest.mark.parametrize("m", [1, 16])
def test_split_k_is_deterministic_and_graph_safe(m):
    """Split-K partials are added in split order: repeated runs and a graph replay agree bit for bit."""
    n, k = 300, 8192
    q = quantize_int4(torch.randn(n, k, device="cuda"), 128)
    x = _x(m, k, torch.bfloat16)
    backend.prepare_weights("int4_linear", q.packed, q.scales, q.zeros, 128, None)
    with kernelswap.use_backend("cuda"):
        assert_repeats_and_replays(lambda: kernelswap.ops.int4_linear(x, q.packed, q.scales, q.zeros, 128, None),
                                   f"int4 gemv m={m}")


@needs_ops
def test_meta_shapes():
    """The Meta implementations give the output shape without a launch (torch.compile's fake tensors)."""
    x = torch.empty(3, 512, device="meta", dtype=torch.bfloat16)
    w = torch.empty(2, 2 * 2048, device="meta", dtype=torch.uint8)
    s = torch.empty(2, 2 * 4 * 16, device="meta", dtype=torch.float16)
    c = torch.empty(1, device="meta", dtype=torch.int32)
    assert torch.ops.kernelswap._C_int4_gemv(x, w, s, None, None, c, 64, 20).shape == (3, 20)
    w8 = torch.empty(2, 2 * 4096, device="meta", dtype=torch.uint8)
    ws = torch.empty(20, device="meta", dtype=torch.float32)
    assert torch.ops.kernelswap._C_int8_gemv(x, w8, ws, None, c, 20).shape == (3, 20)
    assert torch.ops.kernelswap._C_int8_weight_gemv(x, w8, ws, None, c, 20).shape == (3, 20)
    rows = torch.empty(20, 512, device="meta", dtype=torch.int8)  # the layer's own weight
    assert torch.ops.kernelswap._C_int8_gemv(x, rows, ws, None, c, 20).shape == (3, 20)
    assert torch.ops.kernelswap._C_int8_weight_gemv(x, rows, ws, None, c, 20).shape == (3, 20)
