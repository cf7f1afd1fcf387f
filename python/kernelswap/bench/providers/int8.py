"""W8A8 (int8_linear) and W8A16 (int8_weight_linear) providers.

Baselines: the dense layer (cuBLAS), eager per-token quant + torch._int_mm, and the same
eager function under torch.compile (roughly what torchao's int8 dynamic recipe becomes).
"""
from __future__ import annotations

from kernelswap import packing

from ..shapes import LinearShape
from . import Case, Provider, register, tensor_bytes
from .linear import DENSE, activation, bias, compiled, int_mm_linear, io_bytes, register_ours, weight


def _int8_weights(s: LinearShape, dtype, device) -> tuple:
    w_q, w_scale = packing.quantize_int8(weight(s, device))
    return w_q, w_scale, bias(s, device).to(dtype)


def _make_int_mm(compile_: bool):
    def make(s: LinearShape, dtype, device) -> Case:
        def new_args():  # x, then weight, then bias: the draw order every linear provider keeps
            x = activation(s, dtype, device)
            w_q, w_scale = packing.quantize_int8(weight(s, device))
            return x, w_q, w_scale[None, :], bias(s, device)

        sample = new_args()
        fn = compiled(int_mm_linear) if compile_ else int_mm_linear
        what = "torch.compile(eager quant + torch._int_mm)" if compile_ else "eager quant + torch._int_mm"
        return Case(fn, new_args, s.flops(), tensor_bytes(*sample[1:]), io_bytes(s, dtype), note=what)

    return make


register_ours("int8_linear", "linear", _int8_weights)
register("int8_linear", "linear", DENSE)
register("int8_linear", "linear", Provider("eager-int_mm", "baseline", _make_int_mm(False)))
register("int8_linear", "linear", Provider("compile-int_mm", "baseline", _make_int_mm(True), slow=True))

register_ours("int8_weight_linear", "linear", _int8_weights)
register("int8_weight_linear", "linear", DENSE)
