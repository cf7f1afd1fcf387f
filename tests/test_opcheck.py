"""torch.library.opcheck on every public op: schema, fake (meta) impl, dispatch registrations."""
import pytest
import torch

import kernelswap as ks
from kernelswap import packing as P
from utils import DEVICES


def _samples(device):
    x = torch.randn(3, 5, 40, device=device)
    w = torch.randn(24, 40, device=device)
    bias = torch.randn(24, device=device)
    w_q, w_s = P.quantize_int8(w)
    q4 = P.quantize_int4(w, 32)
    q4s = P.quantize_int4(w, 64, symmetric=True)
    values, meta = P.compress_24(P.prune_24(w))
    v8, m8 = P.compress_24(P.quantize_int8(P.prune_24(w))[0])
    a = torch.randint(-127, 128, (6, 40), dtype=torch.int8, device=device)
    w8, s8 = P.quantize_fp8(w)
    w8s, s8s = P.quantize_fp8(P.prune_24(w))
    v8f, m8f = P.compress_24(w8s.float())
    xc = torch.randn(2, 8, 9, 9, device=device).to(memory_format=torch.channels_last)
    wc = torch.randn(16, 8, 3, 3, device=device)
    return {
        "quantize_per_token_fp8": [(x,), (x.bfloat16(),)],
        "fp8_linear": [(x, w8, s8, bias), (x.half(), w8, s8, None), (x, w8, s8, bias, True)],
        "sparse24_fp8_linear": [(x, v8f.to(torch.float8_e4m3fn), m8f, s8s, bias),
                                (x[..., :35].bfloat16(), v8f.to(torch.float8_e4m3fn), m8f, s8s, None)],
        "quantize_per_token_int8": [(x,), (x.half(),)],
        "int8_scaled_mm": [(a, torch.rand(6, device=device), w_q, w_s, bias, torch.bfloat16),
                           (a, torch.rand(6, device=device), w_q, w_s, None, torch.float32)],
        "int8_linear": [(x, w_q, w_s, bias), (x.bfloat16(), w_q, w_s, None)],
        "int8_weight_linear": [(x, w_q, w_s, bias), (x.half(), w_q, w_s, None)],
        "int4_linear": [(x, q4.packed, q4.scales, q4.zeros, 32, bias),
                        (x[..., :33], q4s.packed, q4s.scales, None, 64, None)],
        "sparse24_linear": [(x, values, meta, bias), (x[..., :35], values, meta, None)],
        "sparse24_int8_linear": [(x, v8, m8, w_s, bias)],
        "conv_bn_act": [(xc, wc, torch.randn(16, device=device), [1, 1], [1, 1], [1, 1], 1, "relu", None),
                        (xc, wc, None, [2, 2], [0, 0], [1, 1], 1, "silu",
                         torch.randn(2, 16, 4, 4, device=device)),
                        (xc.contiguous(), wc[:, :1].contiguous().repeat(1, 1, 1, 1)[:8], None, [1, 1], [1, 1],
                         [1, 1], 8, "hardswish", None)],
    }


def test_every_public_op_has_samples():
    assert set(_samples("cpu")) == set(ks.ops.PUBLIC_OPS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_name", ks.ops.PUBLIC_OPS)
def test_opcheck(device, op_name):
    op = getattr(torch.ops.kernelswap, op_name)
    for args in _samples(device)[op_name]:
        utils = torch.library._OPCHECK_DEFAULT_UTILS
        if any(isinstance(a, torch.Tensor) and a.dtype == torch.float8_e4m3fn for a in args):
            # torch's schema check compares the inputs before and after with arithmetic that has no
            # float8 kernel on CPU ("mul_cpu_reduced_float" not implemented for 'Float8_e4m3fn');
            # the fake, autograd-registration and AOT-dispatch checks still run.
            utils = tuple(u for u in utils if u != "test_schema")
        torch.library.opcheck(op, args, test_utils=utils)
