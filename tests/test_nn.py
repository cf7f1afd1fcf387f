"""kernelswap.nn modules: wiring to the ops, numerics against float64, shapes, dtypes,
state_dict round trips, device/dtype moves, constructor checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kernelswap as ks
from kernelswap import packing
from kernelswap.nn import ConvBNAct2d, Int4Linear, Int8Linear, Sparse24Linear
from tests.utils import AWKWARD_M, DEVICES, assert_close_to_ref, assert_exact, needs_cuda, sqnr_db

# One CPU thread (small ops on a busy 2-core machine ran up to 10x slower on two) and the
# reference backend (the oracle; module tests check wiring and numerics): tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread", "reference_backend")

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DT_ID = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _linear(k: int, n: int, bias: bool = True, device="cpu") -> nn.Linear:
    return nn.Linear(k, n, bias=bias, device=device).eval()


def _dense(module: nn.Module, linear: nn.Linear) -> torch.Tensor:
    """The float weight a swapped linear stands for, (N, K) float32."""
    w = linear.weight.detach()
    if isinstance(module, Int8Linear):
        return packing.dequantize_int8(*packing.quantize_int8(w))
    if isinstance(module, Int4Linear):
        return packing.dequantize_int4(packing.quantize_int4(w, module.group_size, module.symmetric))
    pruned = packing.prune_24(w)
    if module.int8:
        return packing.dequantize_int8(*packing.quantize_int8(pruned))
    return pruned.float()


MAKERS = {
    "int8": lambda l: Int8Linear.from_float(l, "int8"),
    "int8-weight": lambda l: Int8Linear.from_float(l, "int8-weight"),
    "int4-g32": lambda l: Int4Linear.from_float(l, 32),
    "int4-g128-sym": lambda l: Int4Linear.from_float(l, 128, symmetric=True),
    "sparse24": lambda l: Sparse24Linear.from_float(l),
    "sparse24-int8": lambda l: Sparse24Linear.from_float(l, int8=True),
}
WEIGHT_ONLY = ("int8-weight", "int4-g32", "int4-g128-sym", "sparse24")  # float activations: float64-exact oracle


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", AWKWARD_M, ids=lambda m: f"M{m}")
def test_linear_matches_float64_of_its_weight(kind, device, m):
    k, n = 100, 24  # K not a multiple of 8, 32, 128: exercises every padding path
    lin = _linear(k, n, device=device)
    mod = MAKERS[kind](lin)
    x = torch.randn(2, m, k, device=device)  # leading batch dims
    out = mod(x)
    assert out.shape == (2, m, n) and out.dtype == x.dtype
    w = _dense(mod, lin).to(device)
    ref64 = x.double() @ w.double().t() + lin.bias.double()
    if kind in WEIGHT_ONLY:
        baseline = F.linear(x, w, lin.bias)  # PyTorch's own fp32 error against the same weight
        assert_close_to_ref(out, ref64, baseline, what=kind)
    elif m:  # W8A8: the activation is quantized too; judged by SQNR against the float64 result
        assert sqnr_db(ref64, out) > 35, f"{kind}: SQNR {sqnr_db(ref64, out):.1f} dB"


@pytest.mark.parametrize("kind", ["int8", "sparse24-int8"])
def test_w8a8_is_the_op_on_packing_output(kind):
    """The module is exactly the op applied to kernelswap.packing's format (integer path: exact)."""
    lin = _linear(72, 16)
    mod = MAKERS[kind](lin)
    x = torch.randn(5, 72)
    if kind == "int8":
        w_q, s = packing.quantize_int8(lin.weight.detach())
        ref = torch.ops.kernelswap.int8_linear(x, w_q, s, lin.bias.detach())
    else:
        w_q, s = packing.quantize_int8(packing.prune_24(lin.weight.detach()))
        v, meta = packing.compress_24(w_q)
        ref = torch.ops.kernelswap.sparse24_int8_linear(x, v, meta, s, lin.bias.detach())
    assert_exact(mod(x), ref, kind)


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DT_ID.get)
def test_half_activations(kind, dtype):
    lin = _linear(64, 32)
    mod = MAKERS[kind](lin).to(dtype)
    x = torch.randn(3, 7, 64).to(dtype)
    out = mod(x)
    assert out.dtype == dtype
    w = _dense(mod, lin)
    ref64 = x.double() @ w.double().t() + lin.bias.to(dtype).double()
    if kind in WEIGHT_ONLY:
        baseline = F.linear(x.float(), w, lin.bias.to(dtype).float()).to(dtype)  # rounding to dtype once
        assert_close_to_ref(out, ref64, baseline, what=f"{kind} {dtype}")
    else:
        assert sqnr_db(ref64, out) > 30


def test_quantization_quality_sqnr():
    """Each format's error against the unquantized layer, at the level its bits allow."""
    lin = _linear(256, 64)
    x = torch.randn(32, 256)
    ref = lin(x).detach()
    floors = {"int8": 35, "int8-weight": 38, "int4-g32": 18, "int4-g128-sym": 14}
    got = {kind: sqnr_db(ref, MAKERS[kind](lin)(x)) for kind in floors}
    assert all(got[k] > floors[k] for k in floors), got
    assert got["int8-weight"] > got["int4-g32"] > got["int4-g128-sym"]


def test_sparse24_is_the_pruned_weight_run_dense():
    lin = _linear(64, 16)
    mod = Sparse24Linear.from_float(lin)
    pruned = packing.prune_24(lin.weight.detach())
    assert packing.is_24_sparse(pruned) and float((pruned == 0).float().mean()) >= 0.5
    x = torch.randn(9, 64)
    assert_close_to_ref(mod(x), x.double() @ pruned.double().t() + lin.bias.double(), F.linear(x, pruned, lin.bias))
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        Sparse24Linear.from_float(lin, prune=False)
    lin.weight.data.copy_(pruned)
    assert_exact(Sparse24Linear.from_float(lin, prune=False)(x), mod(x))


@pytest.mark.parametrize("kind", list(MAKERS))
def test_state_dict_round_trip_and_contexts(kind):
    lin = _linear(40, 12, bias=kind != "int8")
    mod = MAKERS[kind](lin)
    fresh = MAKERS[kind](_linear(40, 12, bias=kind != "int8"))
    sd = mod.state_dict()
    assert all(not isinstance(v, nn.Parameter) for v in sd.values())
    assert sd["format_version"].tolist() == [1]
    fresh.load_state_dict(sd)
    x = torch.randn(4, 40)
    with torch.no_grad():
        a = mod(x)
    with torch.inference_mode():
        b = fresh(x)
    assert_exact(a, b, kind)
    assert list(mod.parameters()) == []


def test_format_version_mismatch_names_the_layer():
    mod = Int8Linear.from_float(_linear(16, 8), name="encoder.fc")
    sd = mod.state_dict()
    sd["format_version"] = torch.tensor([99], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="format version 99.*reads version 1"):
        Int8Linear(16, 8, name="encoder.fc").load_state_dict(sd)


def test_dtype_moves_keep_format_dtypes():
    lin = _linear(64, 8)
    i8, i4, sp = Int8Linear.from_float(lin), Int4Linear.from_float(lin, 64), Sparse24Linear.from_float(lin, int8=True)
    for m in (i8, i4, sp):
        m.to(torch.bfloat16)
        m.half()
    assert i8.w_scale.dtype == torch.float32 and i8.bias.dtype == torch.float16 and i8.w_q.dtype == torch.int8
    assert i4.scales.dtype == torch.float16 and i4.zeros.dtype == torch.uint8
    assert sp.w_scale.dtype == torch.float32 and sp.values.dtype == torch.int8
    ref = Int4Linear.from_float(lin, 64)
    assert_exact(i4.scales, ref.scales)  # fp16 -> bf16 -> fp16 would have rounded them
    assert Sparse24Linear.from_float(lin).half().values.dtype == torch.float16  # float values follow


def test_constructor_and_input_checks_name_the_layer_and_fix():
    with pytest.raises(ValueError, match="mode must be one of"):
        Int8Linear(8, 8, mode="int7")
    with pytest.raises(ValueError, match="group_size must be one of"):
        Int4Linear(8, 8, group_size=48)
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        Int4Linear(0, 8)
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        Int8Linear.from_float(nn.Conv2d(3, 3, 1))
    bad = _linear(8, 4)
    bad.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'blocks.3.fc'.*NaN"):
        Int4Linear.from_float(bad, name="blocks.3.fc")
    mod = Int8Linear.from_float(_linear(8, 4), name="head")
    with pytest.raises(ValueError, match=r"Int8Linear 'head': expected input of shape \(\.\.\., 8\)"):
        mod(torch.randn(2, 9))
    assert "mode='int8'" in repr(mod) and "in_features=8" in repr(mod)
    assert "group_size=32, asymmetric" in repr(Int4Linear.from_float(_linear(64, 4), 32))


@pytest.mark.parametrize("kind", list(MAKERS))
def test_dispatch_wiring(kind):
    """Under the automatic backend choice (Triton's interpreter when TRITON_INTERPRET=1)."""
    lin = _linear(32, 16)
    mod = MAKERS[kind](lin)
    x = torch.randn(3, 32)
    ref = mod(x)
    with ks.use_backend(None):
        out = mod(x)
    assert sqnr_db(ref, out) > 40


# ---------------------------------------------------------------- ConvBNAct2d
def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c).eval()
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_(0, 0.2)
    return bn


ACTS = {"identity": None, "relu": nn.ReLU(), "relu6": nn.ReLU6(), "silu": nn.SiLU(), "hardswish": nn.Hardswish()}
CONVS = {
    "3x3": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1),
    "stride2-nobias": dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, padding=1, bias=False),
    "dilated-rect": dict(in_channels=4, out_channels=6, kernel_size=(3, 1), padding=(2, 0), dilation=2),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
    "grouped-same": dict(in_channels=8, out_channels=12, kernel_size=5, padding="same", groups=4),
}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("conv", list(CONVS))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_conv_bn_act_matches_eager(act, conv, residual):
    c = nn.Conv2d(**CONVS[conv]).eval()
    bn = _bn(c.out_channels)
    mod = ConvBNAct2d.from_modules(c, bn, ACTS[act])
    x = torch.randn(2, c.in_channels, 9, 7)
    with torch.no_grad():
        y = bn(c(x))
        r = torch.randn_like(y) if residual else None
        out = mod(x, r)
        c64, bn64 = c.double(), bn.double()
        y64 = bn64(c64(x.double()))
        fn = ACTS[act] or (lambda t: t)
        ref64 = fn(y64 + r.double() if residual else y64)
        baseline = fn(y + r if residual else y)  # eager fp32 conv -> bn -> act
        c.float(), bn.float()
    assert out.shape == ref64.shape and mod.activation == act
    assert_close_to_ref(out, ref64, baseline, factor=4.0, what=f"{conv} {act}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DT_ID.get)
def test_conv_half_and_channels_last(dtype):
    c, bn = nn.Conv2d(4, 8, 3, padding=1).eval(), _bn(8)
    mod = ConvBNAct2d.from_modules(c, bn, nn.ReLU()).to(dtype)
    x = torch.randn(2, 4, 6, 6)
    out = mod(x.to(dtype).contiguous(memory_format=torch.channels_last))
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = torch.relu(bn(c(x)))
    assert sqnr_db(ref, out) > 30


def test_conv_broadcast_residual_falls_back():
    mod = ConvBNAct2d.from_modules(nn.Conv2d(3, 4, 1).eval(), _bn(4), nn.ReLU())
    x, r = torch.randn(2, 3, 5, 5), torch.randn(4, 1, 1)
    ref64 = torch.relu(F.conv2d(x.double(), mod.weight.double(), mod.bias.double()) + r.double())
    assert_close_to_ref(mod(x, r), ref64, torch.relu(F.conv2d(x, mod.weight, mod.bias) + r))


def test_conv_checks():
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        ConvBNAct2d.from_modules(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), _bn(4))
    with pytest.raises(ValueError, match="training mode"):
        ConvBNAct2d.from_modules(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="cannot fuse activation"):
        ConvBNAct2d.from_modules(nn.Conv2d(3, 4, 3), _bn(4), nn.GELU())
    with pytest.raises(ValueError, match="4 features but the conv has 5"):
        ConvBNAct2d.from_modules(nn.Conv2d(3, 5, 3), _bn(4))
    with pytest.raises(ValueError, match="groups=3 must divide"):
        ConvBNAct2d(4, 6, 3, groups=3)
    mod = ConvBNAct2d.from_modules(nn.Conv2d(3, 4, 3), _bn(4), name="stem.0")
    with pytest.raises(ValueError, match=r"ConvBNAct2d 'stem.0': expected input \(N, 3, H, W\)"):
        mod(torch.randn(1, 4, 8, 8))
    fresh = ConvBNAct2d(3, 4, 3)
    fresh.load_state_dict(mod.state_dict())
    x = torch.randn(1, 3, 8, 8)
    assert_exact(fresh(x), mod(x))


@needs_cuda
@pytest.mark.parametrize("kind", list(MAKERS))
def test_moves_to_cuda_and_back(kind):
    lin = _linear(128, 64)
    mod = MAKERS[kind](lin)
    x = torch.randn(4, 128)
    cpu = mod(x)
    with ks.use_backend(None):
        gpu = mod.to("cuda")(x.cuda())
    assert gpu.device.type == "cuda" and sqnr_db(cpu, gpu.cpu()) > 40
    assert_exact(mod.to("cpu")(x), cpu)
