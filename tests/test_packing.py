"""Packing transforms and their inverses: round-trips, error bounds, the 2:4 pattern, BN folding."""
import pytest
import torch
import torch.nn.functional as F

from kernelswap import packing as P
from kernelswap.ops.int4 import dequantize_int4_ref
from utils import assert_close_to_ref, assert_exact


@pytest.mark.parametrize("shape", [(1, 1), (7, 37), (64, 130)])
def test_int8_round_trip(shape):
    w = torch.randn(shape) * 3
    w[0] = 0  # an all-zero row: scale 0, no NaN
    w_q, w_s = P.quantize_int8(w)
    assert w_q.dtype == torch.int8 and w_s.dtype == torch.float32 and w_s[0] == 0
    err = (P.dequantize_int8(w_q, w_s) - w).abs()
    assert bool((err <= w_s[:, None] / 2 * (1 + 1e-6)).all()), "error exceeds half a quantization step"
    assert bool((w_q.abs() <= 127).all())


def test_int4_pack_unpack_inverse():
    codes = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    packed = P.pack_int4(codes)
    assert packed.shape == (5, 32)
    assert_exact(P.unpack_int4(packed), codes, "unpack(pack(codes))")
    assert int(packed[0, 0]) == int(codes[0, 0]) | int(codes[0, 1]) << 4, "even k in the low nibble"


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("k", [32, 100, 300])
def test_int4_round_trip(group_size, symmetric, k):
    w = torch.randn(9, k)
    q = P.quantize_int4(w, group_size, symmetric)
    kp = -(-k // group_size) * group_size
    assert q.packed.shape == (9, kp // 2) and q.scales.shape == (9, kp // group_size) and q.in_features == k
    assert (q.zeros is None) == symmetric
    w_deq = P.dequantize_int4(q)
    step = q.scales.float().repeat_interleave(group_size, dim=1)[:, :k]
    assert bool(((w_deq - w).abs() <= step / 2 * (1 + 1e-3) + 1e-7).all()), "error exceeds half a step"
    # Padding codes dequantize to exactly 0, so padded K never leaks into the product.
    full = dequantize_int4_ref(q.packed, q.scales, q.zeros, group_size)
    assert_exact(full[:, k:], torch.zeros_like(full[:, k:]), "padding")


def test_int4_zero_and_constant_groups():
    w = torch.zeros(2, 64)
    w[1, 32:] = 0.75  # a constant group
    q = P.quantize_int4(w, 32)
    w_deq = P.dequantize_int4(q)
    assert_exact(w_deq[0], w[0], "an all-zero row stays exactly zero")
    assert_exact(w_deq[1, :32], w[1, :32], "an all-zero group stays exactly zero")
    assert float((w_deq[1, 32:] - 0.75).abs().max()) <= float(q.scales[1, 1]) / 2


@pytest.mark.parametrize("k", [4, 16, 37])
def test_prune_24_pattern_and_choice(k):
    w = torch.randn(11, k)
    pruned = P.prune_24(w)
    assert P.is_24_sparse(pruned)
    groups = F.pad(w, (0, -k % 4)).reshape(11, -1, 4).abs()
    kept = F.pad(pruned, (0, -k % 4)).reshape(11, -1, 4) != 0
    # The kept ones are the two largest of each group.
    smallest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, groups).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())
    assert_exact(pruned[kept.reshape(11, -1)[:, :k]], w[kept.reshape(11, -1)[:, :k]], "kept values unchanged")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("k", [8, 37, 64])
def test_compress_24_round_trip(dtype, k):
    w = P.prune_24(torch.randn(6, k))
    w = P.quantize_int8(w)[0] if dtype == torch.int8 else w.to(dtype)
    w[0, :4] = 0  # a group with fewer than two non-zeros
    values, meta = P.compress_24(w)
    kp = -(-k // 8) * 8
    assert values.shape == (6, kp // 2) and values.dtype == dtype and meta.shape == (6, kp // 8)
    assert_exact(P.decompress_24(values, meta, k), w, "decompress(compress(w))")


def _conv_bn(c_in=6, c_out=10, groups=1):
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=True)
    bn = torch.nn.BatchNorm2d(c_out)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return conv.eval(), bn.eval()


@pytest.mark.parametrize("groups", [1, 2])
def test_fold_bn_matches_eval_conv_bn(groups):
    conv, bn = _conv_bn(groups=groups)
    x = torch.randn(2, 6, 8, 8)
    w, b = P.fold_bn(conv.weight.detach(), conv.bias.detach(), bn)
    out = F.conv2d(x, w, b, padding=1, groups=groups)
    with torch.no_grad():
        expected = bn(conv(x))
        ref = F.batch_norm(F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1,
                                    groups=groups), bn.running_mean.double(), bn.running_var.double(),
                           bn.weight.double(), bn.bias.double(), eps=bn.eps)
    assert_close_to_ref(out, ref, expected, factor=2.0, floor=1e-7, what="folded conv vs eval conv->bn")


def test_fold_bn_is_detached_from_a_trainable_bn():
    conv, bn = _conv_bn()
    assert bn.weight.requires_grad and torch.is_grad_enabled()
    w, b = P.fold_bn(conv.weight.detach(), None, bn)
    assert not w.requires_grad and not b.requires_grad


def test_unfold_bn_inverts_fold():
    conv, bn = _conv_bn()
    w, b = P.fold_bn(conv.weight.detach(), conv.bias.detach(), bn)
    w0, b0 = P.unfold_bn(w, b, bn)
    assert torch.allclose(w0, conv.weight, rtol=1e-5, atol=1e-6) and torch.allclose(b0, conv.bias, atol=1e-5)


def test_fold_bn_without_conv_bias_and_errors():
    conv, bn = _conv_bn()
    w, b = P.fold_bn(conv.weight.detach(), None, bn)
    assert b.shape == (10,)
    with pytest.raises(ValueError, match=r"BatchNorm has 10 features but the conv has 4 output channels"):
        P.fold_bn(torch.randn(4, 6, 3, 3), None, bn)
    with pytest.raises(ValueError, match=r"no running statistics"):
        P.fold_bn(conv.weight.detach(), None, torch.nn.BatchNorm2d(10, track_running_stats=False))
