"""The raw entry points of kernelswap._C (csrc/raw_entry.h) and the runners that call them
(kernelswap.ops._raw).

CPU (with _C built): the entry points are there with the version the Python side expects, and
the C plans refuse bad problems with a message that names what is wrong (shapes, formats, the
GPU). GPU: a swapped layer's eager call goes through a raw plan for every family that has one
(the decode GEMVs, the sm_90a W8A8 / 2:4 / FP8 GEMMs, the mixed-input W8A16 / W4A16 GEMMs) at awkward shapes, and returns the
same bits as the registered op on the same input (both launch the same kernel with the same
plan); it still does under CUDA-graph capture, and on a misaligned input.
"""
from __future__ import annotations

import ctypes

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap import _ext
from kernelswap.ops import _raw

from utils import needs_cuda, needs_ext

L = ctypes.c_int64


def _lib():
    lib = _raw.library()
    assert lib is not None, f"the raw path is off with _C loaded: {_raw.reason()}"
    return lib


def _gemv_plan(lib, fmt=0, group=128, m=1, k=512, n=64, n_tiles=None, w=1 << 20):
    """A plan on fake pointers (the plan stores them only); n_tiles: the weight's leading dim
    (default: its tiles, or n for the row formats 5 and 6)."""
    ws = L(-1)
    fake = 1 << 20
    rows = n if fmt in (_raw.GEMV_INT8_WEIGHT_ROWS, _raw.GEMV_INT8_ROWS) else (n + 15) // 16
    handle = lib.kernelswap_gemv_plan(fmt, group, 1, w, fake, None, None, fake, m, k, n,
                                      rows if n_tiles is None else n_tiles, 0, ctypes.byref(ws))
    return handle, ws.value


# ---------------------------------------------------------------- CPU: the C side of the plans
@needs_ext
def test_python_entry_points_check_their_arguments():
    """_C's Python functions of the raw runs (csrc/py_entry.cpp): five ints (None for null) or a
    TypeError; a misaligned x is refused before the plan is read (kMisaligned), as through ctypes."""
    py = _ext.python_module()
    if py is None:
        pytest.skip("this _C has no Python module init (built before csrc/py_entry.cpp)")
    for run in (py.gemv_run, py.gemm_run):
        with pytest.raises(TypeError, match="expects"):
            run(1, 2, 3)
        with pytest.raises(TypeError):
            run("plan", 16, 16, None, 0)
        assert run(16, 17, 32, None, 0) == _raw.MISALIGNED
        assert run(16, 17, 32, None, 0) == _raw.library().kernelswap_gemm_run(16, 17, 32, None, 0)


@pytest.mark.parametrize("shape", [(1, 70), (16, 4096), (2, 1, 37), (0, 5)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_outputs_made_like_a_stride_zero_view_are_fresh_and_contiguous(shape, dtype):
    """The runners allocate their output as torch.empty_like(shaped_like(...)): a new contiguous
    tensor of the shape and dtype each call, never sharing memory with the kept element or the last output."""
    like = _raw.shaped_like(dtype, torch.device("cpu"), shape)
    assert like.shape == shape and like.stride() == (0,) * len(shape)
    a, b = torch.empty_like(like), torch.empty_like(like)
    for out in (a, b):
        assert out.shape == shape and out.dtype == dtype and out.is_contiguous()
    if a.numel():  # (an empty output's strides are whatever torch picks; nothing is written)
        assert a.stride() == torch.empty(shape).stride()
        assert len({a.data_ptr(), b.data_ptr(), like.data_ptr()}) == 3
    again = _raw.shaped_like(dtype, torch.device("cpu"), (3,))
    assert again.untyped_storage().data_ptr() == like.untyped_storage().data_ptr()  # one kept element


@needs_ext
def test_entry_points_match_the_python_side():
    lib = _lib()
    assert lib.kernelswap_raw_version() == _raw.VERSION
    for name in ("kernelswap_gemv_plan", "kernelswap_gemv_run", "kernelswap_gemm_plan", "kernelswap_gemm_run",
                 "kernelswap_mixed_plan", "kernelswap_raw_free", "kernelswap_raw_error"):
        assert hasattr(lib, name), name


@needs_ext
@pytest.mark.parametrize("kwargs, message", [
    (dict(m=0), "M=0 outside 1..64"),
    (dict(m=65), "M=65 outside 1..64"),
    (dict(k=100), "K=100 must be a positive multiple of 8"),
    (dict(n=64, n_tiles=3), "N=64 does not match the weight's 3 tiles"),
    (dict(fmt=6, n=64, n_tiles=4), "N=64 does not match the weight's 4 rows"),
    (dict(fmt=5, k=520), "needs K % 16 == 0 and 16-byte alignment, got K=520"),
    (dict(fmt=6, w=(1 << 20) + 8), "needs K % 16 == 0 and 16-byte alignment"),
    (dict(fmt=7), "unknown format 7"),
    (dict(group=48), "group_size must be 32, 64 or 128, got 48"),
    (dict(fmt=1, k=(1 << 17) + 8), "int8 needs K <= 2^17"),
])
def test_gemv_plan_refuses_with_the_reason(kwargs, message):
    lib = _lib()
    handle, _ = _gemv_plan(lib, **kwargs)
    assert not handle
    assert message in _raw.error()


@needs_ext
@pytest.mark.parametrize("fmt, group", [(0, 32), (0, 128), (1, 0), (2, 0), (3, 0), (5, 0), (6, 0)])
@pytest.mark.parametrize("m, k, n", [(1, 528, 70), (16, 4096, 4096), (64, 96, 37)])
def test_gemv_plan_sizes_its_workspace(fmt, group, m, k, n):
    lib = _lib()
    handle, ws = _gemv_plan(lib, fmt=fmt, group=group, m=m, k=k, n=n)
    assert handle, _raw.error()
    try:
        assert ws >= 0 and ws % (m * n * 4) == 0  # (splits, M, N) 4-byte partials, or none
        splits = ws // (m * n * 4)
        assert splits != 1 and splits <= (k + 255) // 256  # one split needs no workspace; >= 1 batch a split
    finally:
        lib.kernelswap_raw_free(handle)


def _gemm_plan(lib, kind=0, bf16=1, m=16, n=256, k=512):
    scratch = L(-1)
    fake = 1 << 20
    handle = lib.kernelswap_gemm_plan(kind, bf16, fake, fake if kind >= 2 else None, fake, None, m, n, k,
                                      torch.cuda.current_device() if torch.cuda.is_available() else 0,
                                      ctypes.byref(scratch))
    return handle, scratch.value


@needs_ext
@pytest.mark.parametrize("kwargs, message", [
    (dict(kind=9), "unknown kind 9"),
    (dict(m=0), "M=0 must be in 1..2^31"),
    (dict(k=24), "K must be a positive multiple of 16"),
    (dict(n=40), "N must be a positive multiple of 16"),
    (dict(kind=3, k=48), "8-bit 2:4 needs K to be a multiple of 32"),
    (dict(kind=1, bf16=0), "float8_e4m3fn GEMMs write bfloat16 only"),
])
def test_gemm_plan_refuses_with_the_reason(kwargs, message):
    lib = _lib()
    handle, _ = _gemm_plan(lib, **kwargs)
    assert not handle
    assert message in _raw.error()


def _mixed_plan(lib, kind=0, bf16=1, group=128, m=64, n=256, k=512):
    scratch = L(-1)
    fake = 1 << 20
    handle = lib.kernelswap_mixed_plan(kind, bf16, fake, fake, fake, fake, None, group, m, n, k,
                                       torch.cuda.current_device() if torch.cuda.is_available() else 0,
                                       ctypes.byref(scratch))
    return handle, scratch.value


@needs_ext
@pytest.mark.parametrize("kwargs, message", [
    (dict(kind=2), "unknown kind 2"),
    (dict(bf16=0), "bfloat16 x only"),
    (dict(m=0), "M=0 must be in 1..2^31"),
    (dict(k=24), "K must be a positive multiple of 16"),
    (dict(n=40), "N must be a positive multiple of 16"),
    (dict(group=32), "group_size must be 64 or 128, got 32"),
    (dict(k=576), "K=576 must be a multiple of group_size=128"),
])
def test_mixed_plan_refuses_with_the_reason(kwargs, message):
    lib = _lib()
    handle, _ = _mixed_plan(lib, **kwargs)
    assert not handle
    assert message in _raw.error()


def _sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@needs_ext
@pytest.mark.skipif(_sm90(), reason="checks the refusal off an sm_90 GPU; the GPU tests below run the plans")
def test_gemm_plan_refuses_without_a_hopper_gpu():
    lib = _lib()
    handle, _ = _gemm_plan(lib)
    assert not handle
    assert any(s in _raw.error() for s in ("needs an sm_90 (Hopper) GPU", "without CUTLASS", "without 9.0a"))


# ---------------------------------------------------------------- GPU: layers through raw plans
RECIPE_CASES = [  # (recipe, K, N, Ms): K, N awkward for each family's rules
    ("int4", 520, 70, (1, 3, 16)),           # GEMV, K not a multiple of 128 or 256, N odd-ish
    ("int8-weight", 520, 70, (1, 4)),        # GEMV W8A16, prepared layout (K % 16 != 0)
    ("int8-weight", 528, 70, (1, 4)),        # GEMV W8A16 on the layer's own weight
    ("int8", 520, 70, (1,)),                 # GEMV W8A8, prepared layout
    ("int8", 528, 70, (1,)),                 # GEMV W8A8 on the layer's own weight
    ("int8", 528, 272, (2, 17, 130)),        # quantize + CUTLASS GEMM
    ("sparse24", 520, 70, (1, 3, 8)),        # the 2:4 GEMV
    ("sparse24", 528, 272, (17, 130)),       # CUTLASS 2:4 (the Triton GEMV serves M 9-16)
    ("sparse24-int8", 544, 272, (1, 4, 17, 130)),
    ("int8-weight", 528, 272, (33, 130)),    # the mixed-input GEMM (ops/mixed_cuda.py)
    ("int4", 512, 272, (33, 130)),           # the mixed-input GEMM, group 128
    ("fp8", 528, 272, (1, 17, 130)),
    (ks.Fp8(fast_accum=True), 528, 272, (17, 130)),  # the fast-accumulation GEMM from M = 65
    ("sparse24-fp8", 544, 272, (1, 17, 130)),
]


def _layer(recipe: str, k: int, n: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(k, n)).to("cuda", torch.bfloat16).eval()
    ks.swap(model, recipe, probe=False)
    return model[0]


def _served_raw(layer) -> bool:
    return any(hasattr(run, "plan") for run in layer._runs.values())


def _op_path(layer, x):
    return getattr(ks.ops, layer.OP).overload(x, *layer.op_args())


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("recipe, k, n, ms", RECIPE_CASES)
def test_layer_runs_raw_and_matches_the_op(recipe, k, n, ms):
    layer = _layer(recipe, k, n)
    with torch.no_grad():
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            layer._runs.clear()
            y = layer(x)
            if layer.served_by() != "cuda":
                pytest.skip(f"{recipe} M={m}: served by {layer.served_by()} here, not by _C")
            assert _served_raw(layer), f"{recipe} M={m}: the cuda backend served without a raw plan ({_raw.reason()})"
            py = _ext.python_module()
            assert py is not None, "this _C has no Python module init (csrc/py_entry.cpp): runs go through ctypes"
            assert all(run.c_run in (py.gemv_run, py.gemm_run) for run in layer._runs.values())
            ref = _op_path(layer, x)
            assert torch.equal(y, ref), f"{recipe} M={m}: raw launch differs from the op"
            for lead in ((1, m), (m, 1)):  # leading dims: the runner of another layout, the raw plan
                y3 = layer(x.view(*lead, k))  # itself, its output made in (*lead, N) (for_shape)
                assert y3.shape == (*lead, n) and y3.is_contiguous()
                assert torch.equal(y3.view(m, n), ref)
            assert all(hasattr(run, "plan") for run in layer._runs.values()), \
                f"{recipe} M={m}: a leading-dim layout is not served by the raw plan directly"


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("recipe, k, n, ms", RECIPE_CASES)
def test_raw_plans_replay_in_a_cuda_graph(recipe, k, n, ms):
    layer = _layer(recipe, k, n)
    m = ms[-1]
    static_x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = layer(static_x)
        for _ in range(2):
            static_x.copy_(torch.randn_like(static_x))
            graph.replay()
            assert torch.equal(static_y, _op_path(layer, static_x)), f"{recipe} M={m}: replay differs"


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["int4", "int8-weight", "int8", "sparse24", "sparse24-int8"])
def test_misaligned_input_is_copied_first(recipe):
    layer = _layer(recipe, 512, 64)
    odd = torch.randn(1, 512 + 1, device="cuda", dtype=torch.bfloat16)[:, 1:]  # 2 bytes off 16
    with torch.no_grad():
        x = odd.clone()
        assert odd.data_ptr() % 16 and x.data_ptr() % 16 == 0
        expected = layer(x)
        assert torch.equal(layer(odd), expected)  # a runner of its own: the same kernel on a copy
        assert torch.equal(_op_path(layer, odd), expected)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("recipe, k, n, m", [("int8", 528, 272, 130), ("int8", 528, 272, 17),
                                             ("sparse24", 528, 272, 130), ("sparse24-int8", 544, 272, 17),
                                             ("fp8", 528, 272, 130), ("sparse24-fp8", 544, 272, 17),
                                             ("int8-weight", 528, 272, 130), ("int4", 512, 272, 33)])
def test_raw_gemm_reuses_its_kernel_parameters_at_new_addresses(recipe, k, n, m):
    """A raw CUTLASS plan keeps its kernel parameters between runs (csrc/gemm_args.h GemmCache) and
    patches out's address (and x's, for 16-bit x) into them per run: every run, on a new x, into a
    new out, and on another stream (another scratch, so parameters made again), answers for its own x."""
    layer = _layer(recipe, k, n)
    with torch.no_grad():
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
        ys = [layer(x) for x in xs]  # all kept: each run writes into an out of its own
        if layer.served_by() != "cuda":
            pytest.skip(f"{recipe} M={m}: served by {layer.served_by()} here, not by _C")
        assert _served_raw(layer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            ys.append(layer(xs[0]))
        torch.cuda.current_stream().wait_stream(side)
        ys.append(layer(xs[1]))  # back on the first stream's scratch
        assert len({y.data_ptr() for y in ys}) == len(ys)
        for i, (x, y) in enumerate(zip(xs + xs[:2], ys)):
            assert torch.equal(y, _op_path(layer, x)), f"{recipe} M={m}: run {i} differs from the op"


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["int4", "int8-weight", "int8", "sparse24", "sparse24-int8"])
def test_chained_gemvs_read_what_the_kernel_before_wrote(recipe):
    """The GEMVs launch with programmatic dependent launch on sm_90 (csrc/gemv/gemv_kernel.cuh): each
    may start before the kernel before it ends, and must read x only after it. A chain of layers, each
    reading the last one's output, launched back to back gives the bits of the same chain with the
    stream drained after every layer; the same layer twice in a row (its split-K counters) too."""
    torch.manual_seed(0)
    k = 2048
    model = nn.Sequential(*[nn.Linear(k, k) for _ in range(6)]).to("cuda", torch.bfloat16).eval()
    ks.swap(model, recipe, probe=False)
    layers = list(model) + [model[0], model[0]]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        def chain(drain: bool):
            h = x
            for layer in layers:
                h = layer(h)  # nothing between two layers: GEMV after GEMV
                if drain:
                    torch.cuda.synchronize()
            return h
        drained = chain(True)
        if layers[0].served_by() != "cuda":
            pytest.skip(f"{recipe}: served by {layers[0].served_by()} here, not by _C")
        for _ in range(3):
            assert torch.equal(chain(False), drained)
