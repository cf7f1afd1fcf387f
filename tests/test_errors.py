"""Bad input gets a clear error naming the argument; edge values never turn into silent garbage."""
import pytest
import torch

import kernelswap as ks
from kernelswap import packing as P
from utils import DEVICES


@pytest.fixture
def int8_layer():
    w_q, w_s = P.quantize_int8(torch.randn(16, 40))
    return w_q, w_s


def test_wrong_activation_dtype(int8_layer):
    with pytest.raises(TypeError, match=r"int8_linear: x must be float32, float16, bfloat16, got int32"):
        ks.ops.int8_linear(torch.ones(2, 40, dtype=torch.int32), *int8_layer, None)


def test_wrong_weight_dtype():
    with pytest.raises(TypeError, match=r"int8_weight_linear: w_q must be int8, got float32"):
        ks.ops.int8_weight_linear(torch.randn(2, 40), torch.randn(16, 40), torch.rand(16), None)


def test_mismatched_k(int8_layer):
    with pytest.raises(ValueError, match=r"x has K=41 features but w_q has K=40"):
        ks.ops.int8_linear(torch.randn(2, 41), *int8_layer, None)


def test_mismatched_scale_and_bias(int8_layer):
    w_q, _ = int8_layer
    with pytest.raises(ValueError, match=r"w_scale must have shape \(16,\)"):
        ks.ops.int8_linear(torch.randn(2, 40), w_q, torch.rand(15), None)
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\)"):
        ks.ops.int8_linear(torch.randn(2, 40), w_q, torch.rand(16), torch.randn(3))


def test_int4_group_size_errors():
    q = P.quantize_int4(torch.randn(8, 100), 32)
    with pytest.raises(ValueError, match=r"group_size must be one of \(32, 64, 128\), got 48"):
        ks.ops.int4_linear(torch.randn(2, 100), q.packed, q.scales, q.zeros, 48, None)
    # Kp = 128 is not a multiple of 256 ... nor is a group of 64 consistent with the scales' shape.
    with pytest.raises(ValueError, match=r"scales must have shape \(8, 2\)"):
        ks.ops.int4_linear(torch.randn(2, 100), q.packed, q.scales, q.zeros, 64, None)
    with pytest.raises(ValueError, match=r"w_packed holds Kp=100 codes a row, not a multiple of group_size=32"):
        ks.ops.int4_linear(torch.randn(2, 100), q.packed[:, :50], q.scales, q.zeros, 32, None)
    with pytest.raises(ValueError, match=r"group_size must be one of"):
        P.quantize_int4(torch.randn(8, 100), 100)
    with pytest.raises(ValueError, match=r"x has K=60 features but w_packed holds K=128"):
        ks.ops.int4_linear(torch.randn(2, 60), q.packed, q.scales, q.zeros, 32, None)


def test_non_24_weights_rejected():
    dense = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"weight is not 2:4 sparse \(32 groups .* first at row 0, columns 0..3\); prune it"):
        P.compress_24(dense)
    values, meta = P.compress_24(P.prune_24(dense))
    bad_meta = meta.clone()
    bad_meta[0, 0] = 0x55  # positions (1, 1): the same position twice
    with pytest.raises(ValueError, match=r"sparse24_linear: meta is not 2:4 metadata"):
        ks.ops.sparse24_linear(torch.randn(2, 16), values, bad_meta, None)
    with pytest.raises(ValueError, match=r"values must have shape|meta must have shape"):
        ks.ops.sparse24_linear(torch.randn(2, 16), values, meta[:, :1], None)


def test_conv_errors():
    x, w = torch.randn(1, 8, 5, 5), torch.randn(4, 8, 3, 3)
    with pytest.raises(ValueError, match=r"activation must be one of"):
        ks.ops.conv_bn_act(x, w, None, [1, 1], [1, 1], [1, 1], 1, "gelu", None)
    with pytest.raises(ValueError, match=r"groups=3 must divide"):
        ks.ops.conv_bn_act(x, w, None, [1, 1], [1, 1], [1, 1], 3, "relu", None)
    with pytest.raises(ValueError, match=r"residual must have shape \(1, 4, 5, 5\)"):
        ks.ops.conv_bn_act(x, w, None, [1, 1], [1, 1], [1, 1], 1, "relu", torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"too small"):
        ks.ops.conv_bn_act(torch.randn(1, 8, 2, 2), w, None, [1, 1], [0, 0], [1, 1], 1, "relu", None)


def test_weight_with_nan_rejected_at_packing():
    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    for fn in (P.quantize_int8, P.quantize_int4, P.prune_24):
        with pytest.raises(ValueError, match=r"NaN or Inf"):
            fn(w)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_rows_give_zeros_not_nan(device):
    w = torch.randn(16, 40, device=device)
    w_q, w_s = P.quantize_int8(w)
    x = torch.zeros(3, 40, device=device)
    assert torch.equal(ks.ops.int8_linear(x, w_q, w_s, None), torch.zeros(3, 16, device=device))
    values, meta = P.compress_24(w_q * 0)  # an all-zero weight: scale 0 must not make NaN either
    out = ks.ops.sparse24_int8_linear(torch.randn(3, 40, device=device), values, meta, w_s * 0, None)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_input_row_stays_nan(device):
    w_q, w_s = P.quantize_int8(torch.randn(16, 40, device=device))
    x = torch.randn(3, 40, device=device)
    x[1, 5] = float("nan")
    out = ks.ops.int8_linear(x, w_q, w_s, None)
    assert torch.isnan(out[1]).all(), "a NaN input must show in its row's output"
    assert torch.isfinite(out[[0, 2]]).all(), "other rows are unaffected"


def test_forced_backend_that_cannot_serve_raises(int8_layer):
    with ks.use_backend("torch"):
        with pytest.raises(RuntimeError, match=r"int8_linear: no backend can serve this call with the backend "
                                               r"forced to 'torch'"):
            ks.ops.int8_linear(torch.randn(2, 40), *int8_layer, None)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        with ks.use_backend("fast"):
            pass


def test_device_mismatch_names_the_fix(int8_layer):
    w_q, w_s = int8_layer
    with pytest.raises(ValueError, match=r"w_q is on meta but x is on cpu; move the layer"):
        ks.ops.int8_linear(torch.randn(2, 40), w_q.to("meta"), w_s, None)
