"""FP8 W8A8 providers: fp8_linear and sparse24_fp8_linear (e4m3, row-wise scales).

Baselines besides the dense layer: torch._scaled_mm with row-wise scales (cuBLASLt's FP8 GEMM,
sm_90+), its e4m3 activation quantization included and timed (eager, and under torch.compile,
which fuses the quantization); peer: torchao's Float8DynamicActivationFloat8WeightConfig with
PerRow granularity, under torch.compile (its default Float8MMConfig uses fast accumulation;
ours and torch._scaled_mm's default do not). For the sparse op the same dense FP8 layers are the
baselines (on the unpruned weight: what 2:4 must beat), FLOP/s dense-equivalent.
"""
from __future__ import annotations

import torch

from kernelswap import packing

from ..shapes import LinearShape
from . import Absent, Case, Provider, register, tensor_bytes
from .linear import DENSE, activation, bias, compiled, io_bytes, register_ours, weight
from .peers import _import, _linear, _module_bytes

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def _fp8_weights(s: LinearShape, dtype, device) -> tuple:
    w_q, w_scale = packing.quantize_fp8(weight(s, device))
    return w_q, w_scale, bias(s, device).to(dtype)


def _sparse_fp8_weights(s: LinearShape, dtype, device) -> tuple:
    w_q, w_scale = packing.quantize_fp8(packing.prune_24(weight(s, device)))
    values, meta = packing.compress_24(w_q.float())
    return values.to(E4M3), meta, w_scale, bias(s, device).to(dtype)


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager per-token e4m3 quantization, written as a user would (no kernelswap)."""
    scale = x.float().abs().amax(dim=1, keepdim=True) / E4M3_MAX
    q = (x.float() / scale.clamp(min=1e-12)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def scaled_mm_linear(x, w_q, w_scale, b, use_fast_accum: bool = False):
    """W8A8 FP8 end to end: quantize x per token, torch._scaled_mm row-wise (scales and bias fused)."""
    q, s = quantize_rows_fp8(x)
    return torch._scaled_mm(q, w_q.t(), scale_a=s, scale_b=w_scale, bias=b, out_dtype=x.dtype,
                            use_fast_accum=use_fast_accum)


_ROWWISE: dict[str, bool] = {}


def scaled_mm_rowwise_supported(device) -> bool:
    """Whether this torch's torch._scaled_mm takes row-wise scales on `device`'s type (CPU builds
    before torch 2.13 take one per-tensor scale only). Probed once per device type on a 16x16."""
    kind = torch.device(device).type
    if kind not in _ROWWISE:
        try:
            a = torch.zeros(16, 16, device=device).to(E4M3)
            ones = torch.ones(16, 1, device=device)
            torch._scaled_mm(a, a.t(), scale_a=ones, scale_b=ones.t().contiguous(), out_dtype=torch.bfloat16)
            _ROWWISE[kind] = True
        except (RuntimeError, AttributeError):
            _ROWWISE[kind] = False
    return _ROWWISE[kind]


def _make_scaled_mm(compile_: bool):
    def make(s: LinearShape, dtype, device) -> Case:
        if not hasattr(torch, "_scaled_mm"):
            raise Absent(f"torch {torch.__version__} has no torch._scaled_mm")
        if not scaled_mm_rowwise_supported(device):
            raise Absent(f"torch {torch.__version__}'s torch._scaled_mm takes no row-wise scales on "
                         f"{torch.device(device).type}")

        def new_args():  # x, then weight, then bias: the draw order every linear provider keeps
            x = activation(s, dtype, device)
            w_q, w_scale = packing.quantize_fp8(weight(s, device))
            return x, w_q, w_scale[None, :].contiguous(), bias(s, device).to(dtype)

        sample = new_args()
        fn = compiled(scaled_mm_linear) if compile_ else scaled_mm_linear
        what = "eager e4m3 quant + torch._scaled_mm row-wise"
        return Case(fn, new_args, s.flops(), tensor_bytes(*sample[1:]), io_bytes(s, dtype),
                    note=f"torch.compile({what})" if compile_ else what)

    return make


def _make_torchao_float8(s: LinearShape, dtype, device) -> Case:
    quant = _import("torchao.quantization")
    config_cls = getattr(quant, "Float8DynamicActivationFloat8WeightConfig", None)
    per_row = getattr(quant, "PerRow", None) or getattr(_import("torchao.quantization.granularity"), "PerRow", None)
    if config_cls is None or per_row is None:
        raise Absent(f"torchao {getattr(_import('torchao'), '__version__', '?')} has no "
                     f"Float8DynamicActivationFloat8WeightConfig / PerRow")
    lin = _linear(s, dtype, device)
    quant.quantize_(lin, config_cls(granularity=per_row()))

    def new_args():
        return activation(s, dtype, device), lin

    sample = new_args()
    return Case(compiled(lambda x, lin: lin(x)), new_args, s.flops(), _module_bytes(sample[1]), io_bytes(s, dtype),
                note="torch.compile(torchao Float8DynamicActivationFloat8WeightConfig(PerRow))")


register_ours("fp8_linear", "linear", _fp8_weights)
register_ours("sparse24_fp8_linear", "linear", _sparse_fp8_weights)
for _op in ("fp8_linear", "sparse24_fp8_linear"):
    register(_op, "linear", DENSE)
    register(_op, "linear", Provider("scaled_mm-rowwise", "baseline", _make_scaled_mm(False)))
    register(_op, "linear", Provider("compile-scaled_mm-rowwise", "baseline", _make_scaled_mm(True), slow=True))
    register(_op, "linear", Provider("torchao-float8", "peer", _make_torchao_float8, slow=True, requires="torchao"))
