"""Triton conv_bn_act (implicit GEMM and depthwise) against the reference op.

CPU: kernels under TRITON_INTERPRET=1 on tiny shapes (fp16 and fp32: the interpreter's
fp32 dot is exact). CUDA: bf16/fp16 ResNet-50 and MobileNetV2 layer shapes.
Float paths: error vs a float64 computation within 2x PyTorch's own error at the same
precision (tests/utils.assert_close_to_ref).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernelswap as ks
from kernelswap.ops import conv_triton
from kernelswap.ops.backend import choose, use_backend
from kernelswap.ops.activations import activation_code, apply_activation
from kernelswap.ops.conv_torch import _conv_bn_act_torch

from utils import assert_close_to_ref, interpreting, needs_cuda

# The interpreter serves CPU tensors only when TRITON_INTERPRET=1. The tiny-shape sweep runs
# there only: on a GPU each of its 100 epilogue/geometry variants would compile and tune the
# kernels again; the GPU runs the real layer shapes below instead.
INTERP_DEVICES = ["cpu"] if interpreting() else []
KERNEL_DEVICES = INTERP_DEVICES + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def first_config_only(monkeypatch):
    """Small GPU checks of kernel logic: compile one tile config instead of tuning over all."""
    from kernelswap.kernels import conv_depthwise as dw
    from kernelswap.kernels import conv_implicit_gemm as ig
    for tuner in (ig._conv_igemm_kernel, dw._conv_dw_kernel):
        monkeypatch.setattr(tuner, "configs", tuner.configs[:1])
TINY = {
    # name: (C_in, C_out, kernel, stride, padding, dilation, groups, H, W); all go to a Triton kernel
    "1x1": (8, 12, 1, 1, 0, 1, 1, 5, 7),
    "3x3_pad": (6, 10, 3, 1, 1, 1, 1, 9, 8),
    "3x3_s2_odd": (6, 10, 3, 2, 1, 1, 1, 9, 11),
    "3x3_cin64": (64, 20, 3, 1, 1, 1, 1, 6, 5),  # tap-major K walk, C_in a multiple of BLOCK_K
    "3x3_cin40_s2": (40, 12, 3, 2, 1, 1, 1, 7, 6),  # tap-major, last channel block of each tap masked
    "dilated2": (4, 6, 3, 1, 2, 2, 1, 11, 10),
    "stem7x7_s2": (3, 8, 7, 2, 3, 1, 1, 17, 15),
    "grouped2x16": (32, 32, 3, 1, 1, 1, 2, 6, 7),
    "dw3x3": (16, 16, 3, 1, 1, 1, 16, 7, 9),
    "dw3x3_s2_odd": (24, 24, 3, 2, 1, 1, 24, 11, 9),
    "dw5x5_dil2": (8, 8, 5, 1, 4, 2, 8, 10, 11),
}


def _inputs(case, dtype, device, n=2, residual=False):
    c_in, c_out, kk, s, p, d, g, h, w_ = case
    x = torch.randn(n, c_in, h, w_, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c_out, c_in // g, kk, kk, device=device) / (c_in // g * kk * kk) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device=device).to(dtype)
    ho = (h + 2 * p - d * (kk - 1) - 1) // s + 1
    wo = (w_ + 2 * p - d * (kk - 1) - 1) // s + 1
    res = None
    if residual:
        res = torch.randn(n, c_out, ho, wo, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    return x, weight, bias, [s, s], [p, p], [d, d], g, res


def _check(out, x, weight, bias, stride, padding, dilation, groups, activation, res, what):
    """out vs float64, with F.conv2d at x.dtype on the same device as the baseline."""
    y64 = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), stride, padding,
                   dilation, groups)
    ref = apply_activation(y64 + (0 if res is None else res.double()), activation)
    base = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    base = apply_activation(base if res is None else base + res, activation)
    assert out.dtype == x.dtype and out.is_contiguous(memory_format=torch.channels_last), what
    assert_close_to_ref(out, ref, base, factor=2.0, floor=1e-6, what=what)


# Every activation alone, and the residual add before two of them (the epilogue's order matters
# for relu/hardswish, not its pairing with each activation): 7 epilogues per shape keep this fast.
EPILOGUES = [(a, False) for a in ks.ops.ACTIVATIONS] + [("relu", True), ("hardswish", True)]


@pytest.mark.parametrize("device", INTERP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", list(TINY))
@pytest.mark.parametrize("activation,residual", EPILOGUES, ids=[a + ("+res" if r else "") for a, r in EPILOGUES])
def test_tiny_shapes(device, dtype, case, activation, residual):
    args = _inputs(TINY[case], dtype, device, residual=residual)
    with use_backend("triton"):  # raises instead of falling back: the kernel must serve it
        out = ks.ops.conv_bn_act(*args[:7], activation, args[7])
    _check(out, *args[:7], activation, args[7], what=f"{case} {activation} {dtype}")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_launchers_any_strides(device, first_config_only):
    """The launchers honour strides: NCHW input, a non-contiguous residual, NCHW output, no bias."""
    from kernelswap.kernels import conv_depthwise as dw
    from kernelswap.kernels import conv_implicit_gemm as ig
    dtype = torch.float16
    x, weight, _, s, p, d, g, _ = _inputs(TINY["3x3_s2_odd"], dtype, device)
    x = x.contiguous()
    res = torch.randn(2, 10, 6, 10, device=device).to(dtype)[..., :5].transpose(2, 3)  # (2, 10, 5, 6) strided
    assert res.shape == (2, 10, 5, 6) and not res.is_contiguous()
    out = ig.conv_implicit_gemm(x, ig.prepare_weight(weight, g, dtype), (3, 3), None, res, s, p, d,
                                activation_code("silu"), torch.contiguous_format)
    assert out.is_contiguous()
    y64 = F.silu(F.conv2d(x.double(), weight.double(), None, s, p, d, g) + res.double())
    base = F.silu(F.conv2d(x, weight, None, s, p, d, g) + res)
    assert_close_to_ref(out, y64, base, what="implicit GEMM, NCHW")

    x, weight, bias, s, p, d, g, _ = _inputs(TINY["dw3x3_s2_odd"], dtype, device)
    x = x.contiguous()
    out = dw.conv_depthwise(x, dw.prepare_weight(weight), (3, 3), bias, None, s, p, d,
                            activation_code("relu6"), torch.contiguous_format)
    y64 = F.relu6(F.conv2d(x.double(), weight.double(), bias.double(), s, p, d, g))
    base = F.relu6(F.conv2d(x, weight, bias, s, p, d, g))
    assert_close_to_ref(out, y64, base, what="depthwise, NCHW")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("case", ["3x3_pad", "dw3x3"])
def test_empty_batch_and_nan(device, case, first_config_only):
    x, weight, bias, s, p, d, g, _ = _inputs(TINY[case], torch.float16, device)
    with use_backend("triton"):
        empty = ks.ops.conv_bn_act(x[:0], weight, bias, s, p, d, g, "relu", None)
        assert empty.shape[0] == 0 and empty.shape[1] == weight.shape[0]
        x[0, :, 2, 3] = float("nan")  # relu must not turn NaN into 0 (PTX max would)
        out = ks.ops.conv_bn_act(x, weight, bias, s, p, d, g, "relu", None)
    ref = _conv_bn_act_torch(x.float(), weight.float(), bias.float(), s, p, d, g, "relu", None)
    assert torch.equal(out.isnan(), ref.isnan()), f"NaN pattern differs: {int(out.isnan().sum())} vs " \
                                                   f"{int(ref.isnan().sum())} NaNs"
    assert out.isnan().any()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_prepared_weight_follows_in_place_updates(device, first_config_only):
    x, weight, bias, s, p, d, g, _ = _inputs(TINY["1x1"], torch.float16, device)
    cache = conv_triton._PREP_GEMM[torch.float16]
    with use_backend("triton"):
        first = ks.ops.conv_bn_act(x, weight, bias, s, p, d, g, "identity", None)
        n = len(cache)
        again = ks.ops.conv_bn_act(x, weight, bias, s, p, d, g, "identity", None)
        assert len(cache) == n, "second call with the same weight prepared it again"
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        weight.mul_(-1)  # bumps weight._version: the prepared copy must be remade
        flipped = ks.ops.conv_bn_act(x, weight, bias, s, p, d, g, "identity", None)
    _check(flipped, x, weight, bias, s, p, d, g, "identity", None, what="after weight.mul_(-1)")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_opcheck(device, first_config_only):
    x, weight, bias, s, p, d, g, res = _inputs(TINY["3x3_s2_odd"], torch.float16, device, residual=True)
    with use_backend("triton"):
        torch.library.opcheck(torch.ops.kernelswap.conv_bn_act.default, (x, weight, bias, s, p, d, g, "relu", res),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_fallback_reasons(device):
    """Calls the kernels should not take get a reason, so the dispatcher falls back."""
    reason = conv_triton._static_reason
    x, weight, bias, s, p, d, g, _ = _inputs(TINY["3x3_pad"], torch.float16, device)
    assert reason(x, weight, bias, s, p, d, g, "relu", None) is None
    assert "channels_last" in reason(x.contiguous(), weight, bias, s, p, d, g, "relu", None)
    xg, wg, bg, *geo = _inputs((8, 12, 3, 1, 1, 1, 4, 7, 7), torch.float16, device)[:7]
    assert "grouped" in reason(xg, wg, bg, *geo, "relu", None)
    if device == "cuda":
        assert "fp32" in reason(x.float(), weight.float(), bias, s, p, d, g, "relu", None)
    else:
        assert "interpreter" in reason(x.bfloat16(), weight, bias, s, p, d, g, "relu", None)
    # Not forced: an unsupported call is served by the next backend, never refused.
    impl = choose("conv_bn_act", x.device, x.contiguous(), weight, bias, s, p, d, g, "relu", None)
    assert impl.backend != "triton"


@pytest.mark.parametrize("device", INTERP_DEVICES)
@pytest.mark.parametrize("case", ["dw3x3", "dw3x3_s2_odd"])
def test_depthwise_bf16_interpreted(device, case):
    """bf16 runs in the interpreter for the depthwise kernel: it has no tl.dot."""
    args = _inputs(TINY[case], torch.bfloat16, device, residual=True)
    with use_backend("triton"):
        out = ks.ops.conv_bn_act(*args[:7], "silu", args[7])
    _check(out, *args[:7], "silu", args[7], what=f"{case} bf16")


# ---- CUDA: real layer shapes ------------------------------------------------------------
LAYERS = {
    # name: ((C_in, C_out, kernel, stride, padding, dilation, groups, H, W), activation, residual)
    # The same layers as benchmarks/conv_triton_quick.py, so a run after the benchmark reuses
    # its compiled and tuned kernels.
    "r50_stem7x7_s2": ((3, 64, 7, 2, 3, 1, 1, 224, 224), "relu", False),
    "r50_1x1_64to256_res": ((64, 256, 1, 1, 0, 1, 1, 56, 56), "relu", True),
    "r50_3x3_64": ((64, 64, 3, 1, 1, 1, 1, 56, 56), "relu", False),
    "r50_3x3_128_s2": ((128, 128, 3, 2, 1, 1, 1, 56, 56), "relu", False),
    "mbv2_1x1_expand_24to144": ((24, 144, 1, 1, 0, 1, 1, 56, 56), "relu6", False),
    "mbv2_1x1_project_144to24_res": ((144, 24, 1, 1, 0, 1, 1, 56, 56), "identity", True),
    "mbv2_dw3x3_144": ((144, 144, 3, 1, 1, 1, 144, 56, 56), "relu6", False),
    "mbv2_dw3x3_144_s2": ((144, 144, 3, 2, 1, 1, 144, 56, 56), "relu6", False),
}


# bf16 on every layer; fp16 on three (each dtype compiles and tunes every kernel again).
_FP16_LAYERS = ("r50_3x3_128_s2", "mbv2_dw3x3_144_s2", "r50_stem7x7_s2")
_CUDA_LAYER_CASES = [(torch.bfloat16, name) for name in LAYERS] + [(torch.float16, name) for name in _FP16_LAYERS]


@needs_cuda
@pytest.mark.parametrize("dtype,layer", _CUDA_LAYER_CASES, ids=[f"{str(d)[6:]}-{n}" for d, n in _CUDA_LAYER_CASES])
def test_cuda_layers(dtype, layer):
    case, activation, residual = LAYERS[layer]
    args = _inputs(case, dtype, "cuda", n=1, residual=residual)
    with use_backend("triton"):
        out = ks.ops.conv_bn_act(*args[:7], activation, args[7])
    _check(out, *args[:7], activation, args[7], what=f"{layer} {dtype}")
    # Automatic dispatch: whichever backend wins the timing, the numbers stay within tolerance.
    auto = ks.ops.conv_bn_act(*args[:7], activation, args[7])
    _check(auto, *args[:7], activation, args[7], what=f"{layer} {dtype} dispatched")


@needs_cuda
@pytest.mark.parametrize("activation", ["silu", "hardswish"])
def test_cuda_other_activations(activation, first_config_only):
    args = _inputs((32, 48, 3, 1, 1, 1, 1, 20, 20), torch.bfloat16, "cuda", n=2, residual=True)
    with use_backend("triton"):
        out = ks.ops.conv_bn_act(*args[:7], activation, args[7])
    _check(out, *args[:7], activation, args[7], what=f"bf16 3x3 {activation}")


# cuDNN's fused conv + (residual add) + ReLU (ops/conv.py): any shape the dispatcher may send it.
_FUSED_CASES = {
    "1x1": (64, 96, 1, 1, 0, 1, 1, 14, 14),
    "3x3_s2_odd": (24, 40, 3, 2, 1, 1, 1, 13, 11),
    "stem7x7": (3, 16, 7, 2, 3, 1, 1, 33, 31),
    "dw3x3": (32, 32, 3, 1, 1, 1, 32, 9, 9),
}


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", list(_FUSED_CASES))
@pytest.mark.parametrize("residual", [False, True], ids=["relu", "relu+res"])
def test_cudnn_fused_relu(dtype, case, residual):
    from kernelswap.ops import conv_torch as conv

    args = _inputs(_FUSED_CASES[case], dtype, "cuda", n=3, residual=residual)
    out = conv._conv_bn_act_cudnn_fused(*args[:7], "relu", args[7])
    _check(out, *args[:7], "relu", args[7], what=f"cudnn fused {case} {dtype}")


def test_cudnn_fused_declines_what_it_cannot_fuse():
    from kernelswap.ops import conv_torch as conv

    x, w, b, s, p, d, g, _ = _inputs(_FUSED_CASES["1x1"], torch.float32, "cpu", n=1)
    assert "CUDA tensors" in conv._fused_supports(x, w, b, s, p, d, g, "relu", None)
    if torch.cuda.is_available():
        x, w, b = x.cuda().half(), w.cuda().half(), b.cuda().half()
        assert "ReLU" in conv._fused_supports(x, w, b, s, p, d, g, "relu6", None)
        assert "fp16 / bf16" in conv._fused_supports(x.float(), w.float(), b.float(), s, p, d, g, "relu", None)


@needs_cuda
@pytest.mark.parametrize("residual", [False, True], ids=["relu", "relu+res"])
def test_cudnn_fused_keeps_nan(residual):
    """relu(NaN) is NaN in torch; a fused epilogue computing max(y, 0) would return 0."""
    from kernelswap.ops import conv_torch as conv

    x, w, b, s, p, d, g, r = _inputs(_FUSED_CASES["1x1"], torch.bfloat16, "cuda", n=2, residual=residual)
    x[0, :, 2, 3] = float("nan")
    out = conv._conv_bn_act_cudnn_fused(x, w, b, s, p, d, g, "relu", r)
    ref = _conv_bn_act_torch(x, w, b, s, p, d, g, "relu", r)
    assert torch.equal(out.isnan(), ref.isnan()), f"{int(out.isnan().sum())} NaNs vs {int(ref.isnan().sum())}"


# cuDNN conv without the bias, then bias + residual + activation in place (ops/conv.py): on any
# device (the function is plain torch; the dispatcher times it against conv-with-bias on CUDA).
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("activation,residual", EPILOGUES, ids=[f"{a}{'+res' if r else ''}" for a, r in EPILOGUES])
def test_conv_then_epilogue(device, activation, residual):
    from kernelswap.ops import conv_torch as conv

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    for case in ("1x1", "3x3_s2_odd", "dw3x3"):
        args = _inputs(_FUSED_CASES[case], dtype, device, n=3, residual=residual)
        out = conv._conv_then_epilogue(*args[:7], activation, args[7])
        _check(out, *args[:7], activation, args[7], what=f"conv then epilogue {case} {activation} {device}")
    x, w, _, s, p, d, g, r = args
    out = conv._conv_then_epilogue(x, w, None, s, p, d, g, activation, r)  # no bias
    _check(out, x, w, None, s, p, d, g, activation, r, what=f"conv then epilogue, no bias, {device}")


def test_conv_then_epilogue_declines_without_cuda_or_with_a_wider_residual():
    from kernelswap.ops import conv_torch as conv

    x, w, b, s, p, d, g, r = _inputs(_FUSED_CASES["1x1"], torch.float32, "cpu", n=1, residual=True)
    assert "CUDA tensors" in conv._split_supports(x, w, b, s, p, d, g, "relu", r)
    if torch.cuda.is_available():
        x, w, b, r = x.cuda().half(), w.cuda().half(), b.cuda().half(), r.cuda()
        assert "residual dtype" in conv._split_supports(x, w, b, s, p, d, g, "relu", r)
