"""2:4 sparse providers: sparse24_linear (fp16/bf16 values) and sparse24_int8_linear.

Baselines besides the dense layer: torch.sparse.to_sparse_semi_structured through
cuSPARSELt (torch's default) and through its CUTLASS path; for int8, cuSPARSELt's
int8 GEMM alone (as TARGETS.md P8 quotes it) and dense eager quant + torch._int_mm.
FLOP/s are dense-equivalent (2 M N K), so sparse and dense rates compare directly.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from kernelswap import packing

from ..shapes import LinearShape
from . import Case, Provider, register, tensor_bytes
from .linear import (DENSE, activation, bias, int_mm_linear, io_bytes, quantize_rows_int8, register_ours,
                     weight)


def _sparse_weights(s: LinearShape, dtype, device) -> tuple:
    values, meta = packing.compress_24(packing.prune_24(weight(s, device)).to(dtype))
    return values, meta, bias(s, device).to(dtype)


def _sparse_int8_weights(s: LinearShape, dtype, device) -> tuple:
    w_q, w_scale = packing.quantize_int8(packing.prune_24(weight(s, device)))
    values, meta = packing.compress_24(w_q)
    return values, meta, w_scale, bias(s, device).to(dtype)


@contextlib.contextmanager
def _force_cutlass(on: bool):
    from torch.sparse import SparseSemiStructuredTensor

    old = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = on
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = old


def _make_semi_structured(cutlass: bool):
    def make(s: LinearShape, dtype, device) -> Case:
        if device.type != "cuda":
            raise RuntimeError("to_sparse_semi_structured needs a CUDA device")
        from torch.sparse import to_sparse_semi_structured

        def new_args():
            x = activation(s, dtype, device)
            w = packing.prune_24(weight(s, device)).to(dtype)
            with _force_cutlass(cutlass):
                w_sparse = to_sparse_semi_structured(w)
            return x, w_sparse, bias(s, device).to(dtype)

        sample = new_args()
        wbytes = s.n * s.k * sample[0].element_size() // 2 + s.n * s.k // 8  # values + metadata, estimated
        return Case(F.linear, new_args, s.flops(), wbytes, io_bytes(s, dtype),
                    note=f"{type(sample[1]).__name__}; weight bytes estimated")

    return make


def _make_cslt_int8(s: LinearShape, dtype, device) -> Case:
    """cuSPARSELt int8 GEMM only: x quantized outside the timed call; int32 out when supported."""
    if device.type != "cuda":
        raise RuntimeError("cuSPARSELt needs a CUDA device")

    def new_args():
        q, _ = quantize_rows_int8(activation(s, dtype, device))
        w_q, _ = packing.quantize_int8(packing.prune_24(weight(s, device)))
        return torch._cslt_compress(w_q), q.t()

    sample = new_args()
    out_dtype, note = torch.int32, "GEMM only (int32 out), x quantized outside the timing"
    try:
        torch._cslt_sparse_mm(*sample, out_dtype=out_dtype)
    except RuntimeError:
        out_dtype, note = dtype, f"GEMM only ({dtype} out: int32 out unsupported here), x quantized outside"

    def fn(w_c, q_t):
        return torch._cslt_sparse_mm(w_c, q_t, out_dtype=out_dtype)

    return Case(fn, new_args, s.flops(), tensor_bytes(sample[0]), s.m * s.k + s.m * s.n * 4, note=note)


def _make_dense_int_mm(s: LinearShape, dtype, device) -> Case:
    def new_args():
        x = activation(s, dtype, device)
        w_q, w_scale = packing.quantize_int8(weight(s, device))
        return x, w_q, w_scale[None, :], bias(s, device)

    sample = new_args()
    return Case(int_mm_linear, new_args, s.flops(), tensor_bytes(*sample[1:]), io_bytes(s, dtype),
                note="dense int8: eager quant + torch._int_mm")


register_ours("sparse24_linear", "linear", _sparse_weights)
register("sparse24_linear", "linear", DENSE)
register("sparse24_linear", "linear", Provider("cusparselt", "baseline", _make_semi_structured(False)))
register("sparse24_linear", "linear", Provider("torch-sparse-cutlass", "baseline", _make_semi_structured(True)))

register_ours("sparse24_int8_linear", "linear", _sparse_int8_weights)
register("sparse24_int8_linear", "linear", DENSE)
register("sparse24_int8_linear", "linear", Provider("cusparselt-int8-gemm", "baseline", _make_cslt_int8))
register("sparse24_int8_linear", "linear", Provider("eager-int_mm", "baseline", _make_dense_int_mm))
