"""The 2:4 decode GEMVs (csrc/gemv Sparse24 and Sparse24Int8, kernelswap.ops.gemv_cuda's
sparse24_linear and sparse24_int8_linear).

CPU (CI): the swap-time layout (gemv_layout.sparse24_to_gemv) round-trips to the public
values / meta, and an emulator written from the kernel's reads (lane = 4 g + t; load u, word w
-> k16 step s = 2 u + w // 2, row g + 8 (w % 2), group 4 s + t of the batch; load 8 byte s ->
the nibbles; PRMT expansion of each pair by its nibble) decodes the loads back into the dense
weight decompress_24_ref makes (both formats); supports refuses what the kernel cannot take.
GPU: the ops at M in {1, 2, 7, 16, 33, 64}, N odd, K not a multiple of 256, bf16 / fp16, bias
or not: 2:4 bf16 / fp16 against the float64 reference within 2x the error of the same product
in x.dtype torch, 2:4 int8 bit-exact with its reference; split-K runs agree bit for bit and
with a CUDA graph's replay; a swapped layer of each recipe at M = 1 is served by them.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernelswap
from kernelswap.ops import backend, gemv_cuda, gemv_layout as L
from kernelswap.ops.sparse24 import decompress_24_ref, sparse24_int8_linear_ref
from kernelswap.packing import compress_24, prune_24

from utils import assert_close_to_ref, assert_exact, assert_repeats_and_replays

SHAPES = [(37, 96), (45, 200), (16, 256), (70, 520)]  # (N, K): N odd or not a multiple of 16; K < or not a multiple of 256


def _weight(n: int, k: int, dtype=torch.bfloat16, device="cpu"):
    torch.manual_seed(n * 1000 + k)
    w = prune_24(torch.randn(n, k, device=device)).to(dtype)
    return compress_24(w)


def _emulate(w: torch.Tensor, dtype: torch.dtype, n_pad: int, k_pad: int) -> torch.Tensor:
    """Dense (n_pad, k_pad) weight decoded from the kernel's loads, lane by lane and step by step."""
    tiles = w.shape[0]
    loads = w.view(tiles, k_pad // 256, L.SPARSE24_LOADS, 32, 16)
    dense = torch.zeros(n_pad, k_pad, dtype=dtype)
    for tile in range(tiles):
        for b in range(k_pad // 256):
            for lane in range(32):
                g, t = lane // 4, lane % 4
                meta = loads[tile, b, 8, lane]
                for s in range(16):
                    u, pair = s // 2, s % 2
                    nib_byte = int(meta[s])
                    for h in range(2):  # row g (word 2 pair), row g + 8 (word 2 pair + 1)
                        word = loads[tile, b, u, lane, 4 * (2 * pair + h): 4 * (2 * pair + h) + 4]
                        v = word.view(dtype)  # (v0, v1)
                        nib = (nib_byte >> (4 * h)) & 0xF
                        i0, i1 = nib & 3, nib >> 2
                        row, k0 = 16 * tile + g + 8 * h, 256 * b + 16 * s + 4 * t
                        dense[row, k0 + i0] = v[0]
                        dense[row, k0 + i1] = v[1]
    return dense


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_layout_round_trips_and_decodes_as_the_kernel_reads_it(n, k, dtype):
    values, meta = _weight(n, k, dtype)
    w = L.sparse24_to_gemv(values, meta)
    n_pad, k_pad = -(-n // 16) * 16, -(-values.shape[1] * 2 // 256) * 256
    assert w.dtype == torch.uint8 and w.shape == (n_pad // 16, k_pad // 256 * L.SPARSE24_LOADS * 32 * 16)
    back_values, back_meta = L.sparse24_from_gemv(w, n, values.shape[1] * 2)
    assert torch.equal(back_values, values.view(torch.int16)) and torch.equal(back_meta, meta)
    expected = F.pad(decompress_24_ref(values, meta), (0, k_pad - values.shape[1] * 2, 0, n_pad - n))
    assert torch.equal(_emulate(w, dtype, n_pad, k_pad), expected)


def _int8_weight(n: int, k: int, device="cpu"):
    torch.manual_seed(n * 1000 + k + 1)
    keep = prune_24(torch.randn(n, k, device=device)) != 0
    w_q = torch.randint(1, 128, (n, k), device=device, dtype=torch.int8) * torch.where(
        torch.rand(n, k, device=device) < 0.5, -1, 1).to(torch.int8)
    return compress_24(w_q * keep)


def _emulate_int8(w: torch.Tensor, n_pad: int, k_pad: int) -> torch.Tensor:
    """Dense (n_pad, k_pad) int8 weight decoded from the int8 kernel's loads (m16n8k32 A registers:
    reg 0 row g K 4t.., reg 1 row g + 8, reg 2 row g K 16 + 4t.., reg 3 row g + 8)."""
    tiles = w.shape[0]
    loads = w.view(tiles, k_pad // 256, L.SPARSE24_INT8_LOADS, 32, 16)
    dense = torch.zeros(n_pad, k_pad, dtype=torch.int8)
    for tile in range(tiles):
        for b in range(k_pad // 256):
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for s in range(8):
                    nibs = int(loads[tile, b, 4, lane, 2 * s]) | int(loads[tile, b, 4, lane, 2 * s + 1]) << 8
                    for c in range(2):  # word 2 (s % 2) + c: K 32 s + 16 c + 4 t
                        word = loads[tile, b, s // 2, lane, 4 * (2 * (s % 2) + c): 4 * (2 * (s % 2) + c) + 4]
                        v = word.view(torch.int8)
                        for h in range(2):  # bytes 0-1: row g, bytes 2-3: row g + 8
                            nib = (nibs >> (4 * (2 * c + h))) & 0xF
                            row, k0 = 16 * tile + g + 8 * h, 256 * b + 32 * s + 16 * c + 4 * t
                            dense[row, k0 + (nib & 3)] = v[2 * h]
                            dense[row, k0 + (nib >> 2)] = v[2 * h + 1]
    return dense


@pytest.mark.parametrize("n,k", SHAPES)
def test_int8_layout_round_trips_and_decodes_as_the_kernel_reads_it(n, k):
    values, meta = _int8_weight(n, k)
    w = L.sparse24_int8_to_gemv(values, meta)
    n_pad, k_pad = -(-n // 16) * 16, -(-values.shape[1] * 2 // 256) * 256
    assert w.shape == (n_pad // 16, k_pad // 256 * L.SPARSE24_INT8_LOADS * 32 * 16)
    back_values, back_meta = L.sparse24_int8_from_gemv(w, n, values.shape[1] * 2)
    assert torch.equal(back_values, values) and torch.equal(back_meta, meta)
    expected = F.pad(decompress_24_ref(values, meta), (0, k_pad - values.shape[1] * 2, 0, n_pad - n))
    assert torch.equal(_emulate_int8(w, n_pad, k_pad), expected)


def test_supports_refuses_with_the_reason():
    values, meta = _weight(32, 256)
    x = torch.randn(1, 256, dtype=torch.float16)
    assert "values are torch.bfloat16 but x is torch.float16" in gemv_cuda._s24_supports(x, values, meta, None)
    x = torch.randn(1, 100, dtype=torch.bfloat16)
    assert "K=100 is not a multiple of 8" in gemv_cuda._s24_supports(x, values, meta, None)
    x = torch.randn(65, 256, dtype=torch.bfloat16)
    assert "M=65 > 64" in gemv_cuda._s24_supports(x, values, meta, None)


# ---------------------------------------------------------------- GPU
def _gpu_ready() -> bool:
    return (torch.cuda.is_available() and gemv_cuda._device_reason(torch.cuda.current_device()) is None
            and gemv_cuda._s24_build_reason() is None)


needs_gemv = pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and a kernelswap._C with the 2:4 GEMV")


def gpu_cases(test):
    """M 1-64, N odd or not a multiple of 16, K below or not a multiple of 256 (and a split-K K),
    bf16 / fp16, bias or not."""
    for mark in (pytest.mark.parametrize("m", [1, 2, 7, 16, 33, 64]),
                 pytest.mark.parametrize("n,k", SHAPES + [(300, 4104)]),
                 pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"]),
                 pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"]),
                 pytest.mark.gpu, needs_gemv):
        test = mark(test)
    return test


def _run(x, values, meta, bias):
    p = gemv_cuda._s24_prepared(values, meta, None, bias)
    return torch.ops.kernelswap._C_sparse24_gemv(x, p.w, p.bias, p.counters, values.shape[0])


def _run_int8(x, values, meta, w_scale, bias):
    p = gemv_cuda._s24_prepared(values, meta, w_scale, bias)
    return torch.ops.kernelswap._C_sparse24_int8_gemv(x, p.w, p.scales, p.bias, p.counters, values.shape[0])


@gpu_cases
def test_gemv_matches_the_reference(m, n, k, dtype, with_bias):
    values, meta = _weight(n, k, dtype, "cuda")
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    out = _run(x, values, meta, bias)
    dense = decompress_24_ref(values, meta)[:, :k]
    ref64 = x.double() @ dense.double().t() + (bias.double() if with_bias else 0)
    assert out.dtype == dtype
    assert_close_to_ref(out, ref64, F.linear(x, dense, bias), what=f"2:4 gemv m={m} n={n} k={k}")


@gpu_cases
def test_int8_gemv_is_bit_exact_with_the_reference(m, n, k, dtype, with_bias):
    values, meta = _int8_weight(n, k, "cuda")
    w_scale = torch.rand(n, device="cuda") * 1e-2 + 1e-4
    x = torch.randn(m, k, device="cuda").to(dtype) * torch.logspace(-2, 2, m, device="cuda").to(dtype)[:, None]
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    out = _run_int8(x, values, meta, w_scale, bias)
    assert_exact(out, sparse24_int8_linear_ref(x, values, meta, w_scale, bias), what=f"2:4 int8 gemv m={m} n={n} k={k}")


@needs_gemv
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16])
def test_split_k_is_deterministic_and_graph_safe(m):
    values, meta = _weight(300, 8192, torch.bfloat16, "cuda")
    x = torch.randn(m, 8192, device="cuda").to(torch.bfloat16)
    backend.prepare_weights("sparse24_linear", values, meta, None)
    assert_repeats_and_replays(lambda: _run(x, values, meta, None), f"2:4 gemv m={m}")


@needs_gemv
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["sparse24", "sparse24-int8"])
def test_swapped_layer_at_m1_is_served_by_the_gemv(recipe):
    model = torch.nn.Sequential(torch.nn.Linear(520, 70)).to("cuda", torch.bfloat16).eval()
    kernelswap.swap(model, recipe, probe=False)
    layer = model[0]
    x = torch.randn(1, 1, 520, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
        assert layer.served_by() == "cuda"
        with kernelswap.use_backend("reference"):
            ref = layer(x)
    assert_close_to_ref(out.double(), ref.double(), ref, factor=4.0, floor=1e-2, what=f"{recipe} layer M=1")
