"""The calibrated methods over a model: which statistics, in which order, what comes out.

int4_weights(...)  -> {layer name: Int4Weight}        rtn | awq | gptq
fp8_weights(...)   -> {layer name: (w_q, w_scale)}     rtn | gptq
pruned_weights(...) -> {layer name: 2:4 float weight}  magnitude | wanda | sparsegpt

GPTQ, Wanda and SparseGPT go block by block (sequential.py): each block is calibrated on the
outputs of the already compressed blocks before it, as in the papers' code. GPTQ also goes set of
Linears by set inside a block (its code's --true-sequential) and aims at the float model's outputs
(gptq.float_target); Wanda and SparseGPT calibrate a block's Linears together, as their code does. The
float weights are restored afterwards unless keep=True (ks.prune keeps them). AWQ
calibrates on the float model in one pass and folds its scales into the model (the
float model stays equivalent; see awq.py), which it keeps.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from typing import Callable

from ..packing import Int4Weight, dequantize_int4, prune_24, quantize_fp8, quantize_int4
from . import calibration as C
from .sequential import sequential
from .awq import awq_int4, awq_model
from .gptq import gptq_fp8, gptq_int4
from .sparsegpt import sparsegpt_24
from .wanda import wanda_24

INT4_METHODS = ("rtn", "awq", "gptq")
FP8_METHODS = ("rtn", "gptq")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED = {"awq", "gptq", "wanda", "sparsegpt"}


def _restore(layers, saved: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, linear in layers:
            if name in saved:
                linear.weight.copy_(saved[name])


def int4_weights(model: nn.Module, layers: list[tuple[str, nn.Linear]], data, method: str, group_size: int,
                 symmetric: bool, show: bool = True) -> dict[str, Int4Weight]:
    if method == "rtn":
        return {n: quantize_int4(m.weight.detach(), group_size, symmetric) for n, m in layers}
    data = C.batches(data, f"ks.Int4(method={method!r})")
    if method == "awq":
        consumers = dict(layers)
        stats = C.collect(model, consumers, data, ("hessian", "absmean"), "awq: statistics", show=show)
        scales = awq_model(model, consumers, stats, data[0], group_size, symmetric)
        out = {}
        for name, linear in C.progress(layers, "awq: clip search", len(layers), show):
            h = stats[name].hessian
            if name in scales:
                s = scales[name].to(h.device)
                h = h / (s[:, None] * s[None, :])  # the layer now reads X / s
            out[name] = awq_int4(linear.weight.detach(), h, group_size, symmetric)
            stats[name].hessian = None
        return out
    if method != "gptq":
        raise ValueError(f"ks.Int4: method must be one of {INT4_METHODS}, got {method!r}")
    return _gptq(model, layers, data, lambda w, st: gptq_int4(w, st.hessian, group_size, symmetric, shift=st.shift),
                 dequantize_int4, show)


def fp8_weights(model: nn.Module, layers: list[tuple[str, nn.Linear]], data, method: str,
                show: bool = True) -> dict[str, tuple[Tensor, Tensor]]:
    """{layer name: (w_q e4m3, w_scale)} as packing.quantize_fp8 makes them: rtn | gptq."""
    if method == "rtn":
        return {n: quantize_fp8(m.weight.detach()) for n, m in layers}
    if method != "gptq":
        raise ValueError(f"ks.Fp8: method must be one of {FP8_METHODS}, got {method!r}")
    data = C.batches(data, f"ks.Fp8(method={method!r})")
    return _gptq(model, layers, data, lambda w, st: gptq_fp8(w, st.hessian, shift=st.shift),
                 lambda q: q[0].float() * q[1][:, None], show)


def _gptq(model, layers, data, quantize: Callable, dequantize: Callable, show: bool) -> dict:
    """GPTQ over the model: block by block, set of Linears by set (true-sequential), float targets;
    quantize(weight, stats) -> the layer's result, dequantize(result) -> the float weight the later
    blocks see while they calibrate. The float weights are restored afterwards."""
    out: dict = {}
    saved = {n: m.weight.detach().clone() for n, m in layers}

    def process(name, linear, st):
        q = quantize(linear.weight.detach(), st)
        out[name] = q
        with torch.no_grad():  # later blocks see this layer quantized
            linear.weight.copy_(dequantize(q).to(linear.weight.dtype))

    try:
        sequential(model, layers, data, ("hessian", "shift"), process, "gptq", show, true_sequential=True,
                   float_targets=True)
    finally:
        _restore(layers, saved)
    return out


def pruned_weights(model: nn.Module, layers: list[tuple[str, nn.Linear]], data, method: str, keep: bool = False,
                   show: bool = True) -> tuple[dict[str, Tensor], dict[str, float]]:
    """({name: pruned weight}, {name: relative output error on the calibration data, when measured})."""
    if method not in PRUNE_METHODS:
        raise ValueError(f"kernelswap: 2:4 method must be one of {PRUNE_METHODS}, got {method!r}")
    out: dict[str, Tensor] = {}
    errors: dict[str, float] = {}
    if method == "magnitude":
        out = {n: prune_24(m.weight.detach()) for n, m in layers}
        if keep:
            _restore(layers, out)
        return out, errors
    data = C.batches(data, f"2:4 method {method!r}")
    saved = {} if keep else {n: m.weight.detach().clone() for n, m in layers}
    want = ("sqnorm", "hessian") if method == "wanda" else ("hessian",)

    def process(name, linear, st):
        w = linear.weight.detach()
        p = wanda_24(w, st.sqnorm) if method == "wanda" else sparsegpt_24(w, st.hessian)
        errors[name] = C.output_error(w, p, st.hessian)
        out[name] = p
        with torch.no_grad():
            linear.weight.copy_(p)

    try:
        sequential(model, layers, data, want, process, method, show, true_sequential=False)
    finally:
        if not keep:
            _restore(layers, saved)
    return out, errors


__all__ = ["CALIBRATED", "FP8_METHODS", "INT4_METHODS", "PRUNE_METHODS", "fp8_weights", "int4_weights",
           "pruned_weights"]
