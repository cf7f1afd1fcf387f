"""The Ampere (sm_80+, mma.sp) 2:4 GEMMs: csrc/sm80, csrc/sm80_sparse_ops.cu and the weight
layout of kernelswap.ops.sparse24_sm80.

CPU: the metadata reorder against a line-by-line transcription of CUTLASS's host
`reorder_meta` (cutlass/util/host_reorder.h) and ColumnMajorInterleaved<2> offsets; the
padding of `prepare`; which builds run on which GPU; the `supports` reasons; Meta shapes
and the ops' errors.
GPU (any sm_80+, the H100 included: the kernels are called directly there, since the
dispatcher prefers the sm_90a GEMMs): each kernel against the reference ops on awkward
shapes, int8 bit-exact, float within tests/utils' baseline-relative tolerance.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernelswap import _ext, packing
from kernelswap.ops import sparse24_cuda, sparse24_sm80
from kernelswap.ops.sparse24 import sparse24_int8_linear_ref
from utils import assert_close_to_ref, assert_exact, needs_ext, raises_safely

C = torch.ops.kernelswap


def _reorder_meta_loops(src: torch.Tensor) -> torch.Tensor:
    """CUTLASS's reorder_meta, loop for loop, into a flat ColumnMajorInterleaved<2> buffer
    (offset of (row, col) = (col // 2) * rows * 2 + row * 2 + col % 2)."""
    rows, cols = src.shape
    two_bytes = src.element_size() == 2
    group, interweave = (32, 4) if two_bytes else (16, 2)
    dest = torch.zeros(rows * cols, dtype=src.dtype)
    for m in range(rows):
        for k in range(cols):
            dest_row = m // group * group + (m % 8) * interweave + (m % group) // 8
            dest_col = k
            if dest_row % 2 == 0 and dest_col % 2 == 1:
                dest_row, dest_col = dest_row + 1, dest_col - 1
            elif dest_row % 2 == 1 and dest_col % 2 == 0:
                dest_row, dest_col = dest_row - 1, dest_col + 1
            dest[(dest_col // 2) * rows * 2 + dest_row * 2 + dest_col % 2] = src[m, k]
    return dest


@pytest.mark.parametrize("dtype,rows,cols", [(torch.int16, 64, 6), (torch.int16, 32, 2), (torch.int32, 48, 4)],
                         ids=["int16-64x6", "int16-32x2", "int32-48x4"])
def test_reorder_matches_cutlass_loops(dtype, rows, cols):
    src = torch.randint(-2**15, 2**15 - 1, (rows, cols), dtype=torch.int32).to(dtype)
    assert torch.equal(sparse24_sm80.reorder_meta(src), _reorder_meta_loops(src))


def test_reorder_refuses_partial_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        sparse24_sm80.reorder_meta(torch.zeros(48, 2, dtype=torch.int16))
    with pytest.raises(ValueError, match="W even"):
        sparse24_sm80.reorder_meta(torch.zeros(32, 3, dtype=torch.int16))


@pytest.mark.parametrize("dtype,n,k", [(torch.bfloat16, 64, 200), (torch.float16, 32, 64), (torch.int8, 48, 96)],
                         ids=["bf16-K200", "fp16-K64", "int8-K96"])
def test_prepare_pads_and_keeps_every_nibble(dtype, n, k):
    w = packing.prune_24(torch.randn(n, k))
    values, meta = packing.compress_24(w.round().to(dtype) if dtype == torch.int8 else w.to(dtype))
    v, e = sparse24_sm80.prepare(values, meta)
    tile = sparse24_sm80.k_tile(dtype)
    k_pad = -(-values.shape[1] * 2 // tile) * tile
    assert v.shape == (n, k_pad // 2) and v.dtype == dtype and e.shape == (n, k_pad // 8) and e.dtype == torch.uint8
    assert torch.equal(v[:, : values.shape[1]], values) and not v[:, values.shape[1]:].any()
    # Undo the reorder with the loop transcription's own index map: the words are the public
    # meta's bytes, padded with the 0x44 nibbles (positions 0 and 1).
    word = torch.int32 if dtype == torch.int8 else torch.int16
    padded = meta.new_full((n, k_pad // 8), 0x44)
    padded[:, : meta.shape[1]] = meta
    assert torch.equal(e.reshape(-1).view(word), _reorder_meta_loops(padded.view(word)))


def test_prepare_refuses_rows_that_split_a_block():
    values, meta = packing.compress_24(packing.prune_24(torch.randn(48, 64)).to(torch.bfloat16))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        sparse24_sm80.prepare(values, meta)


@pytest.mark.parametrize("archs,cap,runs", [
    ("8.0", (8, 0), True), ("8.0", (8, 9), True), ("8.9", (8, 0), False), ("9.0a", (9, 0), True),
    ("9.0a", (8, 9), False), ("8.0;8.9;9.0a+PTX", (10, 0), True), ("8.0;8.9;9.0a", (10, 0), False),
    ("8.0 8.6+PTX", (9, 0), True), ("8.0", (9, 0), False),
])
def test_runs_here(archs, cap, runs):
    assert _ext.runs_here(archs, *cap) is runs


def test_sm80_supports_reasons_without_gpu():
    values, meta = packing.compress_24(packing.prune_24(torch.randn(48, 64)).to(torch.bfloat16))
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert "multiple of 32" in sparse24_cuda._sparse24_sm80_supports(x, values, meta, None)
    assert "values are" in sparse24_cuda._sparse24_sm80_supports(x.half(), values, meta, None)
    v64, m64 = packing.compress_24(packing.prune_24(torch.randn(64, 64)).to(torch.bfloat16))
    offset = torch.randn(3 * 64 + 1, dtype=torch.bfloat16)[1:].view(3, 64)
    assert "aligned" in sparse24_cuda._sparse24_sm80_supports(offset, v64, m64, None)
    v8, m8 = packing.compress_24(packing.prune_24(torch.randn(40, 64)).round().to(torch.int8))
    assert "multiple of 16" in sparse24_cuda._sparse24_int8_sm80_supports(x, v8, m8, torch.ones(40), None)
    assert "not instantiated" in sparse24_cuda._sparse24_int8_sm80_supports(x.float(), v8, m8, torch.ones(40), None)


# ---------------------------------------------------------------- the ops, Meta tensors
def _meta_layout(n, k, dtype):
    tile = sparse24_sm80.k_tile(dtype)
    k_pad = -(-k // tile) * tile
    return (torch.empty(n, k_pad // 2, dtype=dtype, device="meta"),
            torch.empty(n, k_pad // 8, dtype=torch.uint8, device="meta"))


@needs_ext
@pytest.mark.parametrize("m", [0, 1, 33])
def test_meta_shapes(m):
    v, e = _meta_layout(96, 200, torch.bfloat16)
    y = C._C_sparse24_mm_sm80(torch.empty(m, 200, dtype=torch.bfloat16, device="meta"), v, e, None)
    assert y.shape == (m, 96) and y.dtype == torch.bfloat16
    v8, e8 = _meta_layout(80, 224, torch.int8)
    y = C._C_sparse24_int8_mm_sm80(torch.empty(m, 224, dtype=torch.int8, device="meta"),
                                   torch.empty(m, device="meta"), v8, e8, torch.empty(80, device="meta"),
                                   torch.empty(80, device="meta"), torch.float16)
    assert y.shape == (m, 80) and y.dtype == torch.float16


@needs_ext
@raises_safely
def test_op_errors():
    v, e = _meta_layout(64, 128, torch.bfloat16)
    x = torch.empty(3, 128, dtype=torch.bfloat16, device="meta")
    with pytest.raises(RuntimeError, match="x must be bfloat16 or float16"):
        C._C_sparse24_mm_sm80(x.float(), v, e, None)
    with pytest.raises(RuntimeError, match="values must be float16"):
        C._C_sparse24_mm_sm80(x.half(), v, e, None)
    v48, e48 = _meta_layout(48, 128, torch.bfloat16)
    with pytest.raises(RuntimeError, match="N must be a positive multiple of 32"):
        C._C_sparse24_mm_sm80(x, v48, e48, None)
    with pytest.raises(RuntimeError, match="not a multiple of the K tile 64"):
        C._C_sparse24_mm_sm80(torch.empty(3, 96, dtype=torch.bfloat16, device="meta"), v[:, :48].contiguous(),
                              e[:, :12].contiguous(), None)
    with pytest.raises(RuntimeError, match="x has K=192 but values hold K_pad=128"):
        C._C_sparse24_mm_sm80(torch.empty(3, 192, dtype=torch.bfloat16, device="meta"), v, e, None)
    with pytest.raises(RuntimeError, match="meta is"):
        C._C_sparse24_mm_sm80(x, v, e[:, :8].contiguous(), None)
    with pytest.raises(RuntimeError, match="bias must have 64 elements"):
        C._C_sparse24_mm_sm80(x, v, e, torch.empty(32, device="meta"))
    v8, e8 = _meta_layout(64, 128, torch.int8)
    q, s, ws = torch.empty(3, 128, dtype=torch.int8, device="meta"), torch.empty(3, device="meta"), \
        torch.empty(64, device="meta")
    with pytest.raises(RuntimeError, match="out_dtype must be bfloat16 or float16"):
        C._C_sparse24_int8_mm_sm80(q, s, v8, e8, ws, None, torch.float32)
    with pytest.raises(RuntimeError, match="x_scale must have 3 elements"):
        C._C_sparse24_int8_mm_sm80(q, s[:2], v8, e8, ws, None, torch.bfloat16)
    with pytest.raises(RuntimeError, match="not a multiple of the K tile 128"):
        C._C_sparse24_int8_mm_sm80(q[:, :64].contiguous(), s, v8[:, :32].contiguous(), e8[:, :8].contiguous(), ws,
                                   None, torch.bfloat16)


# ---------------------------------------------------------------- GPU
def _on_sm80_plus() -> bool:
    if not (torch.cuda.is_available() and _ext.load() and _ext.build_info().get("cutlass") == "1"):
        return False
    return _ext.runs_here(_ext.build_info().get("archs", ""), *torch.cuda.get_device_capability())


# (a GPU, a CUTLASS build, and code in that build for the GPU's arch)
needs_sm80 = pytest.mark.skipif(not _on_sm80_plus(), reason="needs an sm_80+ GPU this CUTLASS build runs on")
M_SIZES = (1, 7, 16, 33, 4096)
KN = [(16, 32), (200, 96), (8192, 8192)]  # smallest legal, awkward (K_pad 256), large
KN_INT8 = [(32, 16), (224, 80), (8192, 8192)]


@needs_sm80
@pytest.mark.parametrize("k,n", KN, ids=[f"K{k}N{n}" for k, n in KN])
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sparse24_sm80_close(m, k, n, dtype):
    dev = "cuda"
    values, meta = packing.compress_24(packing.prune_24(torch.randn(n, k, device=dev)).to(dtype))
    x = torch.randn(m, k, device=dev, dtype=dtype)
    bias = torch.randn(n, device=dev, dtype=dtype) if m % 2 else None
    out = sparse24_cuda._sparse24_linear_sm80(x, values, meta, bias)
    w = packing.decompress_24(values, meta, k)
    ref64 = x.double() @ w.double().t() + (0 if bias is None else bias.double())
    assert out.shape == (m, n) and out.dtype == dtype and out.is_contiguous()
    assert_close_to_ref(out, ref64, F.linear(x, w, bias), what=f"sparse24 sm80 m={m} k={k} n={n} {dtype}")


@needs_sm80
@pytest.mark.parametrize("k,n", KN_INT8, ids=[f"K{k}N{n}" for k, n in KN_INT8])
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sparse24_int8_sm80_exact(m, k, n, dtype):
    dev = "cuda"
    w_q, w_s = packing.quantize_int8(packing.prune_24(torch.randn(n, k, device=dev)))
    values, meta = packing.compress_24(w_q)
    x = torch.randn(m, k, device=dev, dtype=dtype)
    bias = torch.randn(n, device=dev) if m % 2 else None
    out = sparse24_cuda._sparse24_int8_linear_sm80(x, values, meta, w_s, bias)
    assert_exact(out, sparse24_int8_linear_ref(x, values, meta, w_s, bias), f"sparse24_int8 sm80 m={m} k={k} n={n}")
