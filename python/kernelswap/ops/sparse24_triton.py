"""Triton implementations of the sparse24 ops, registered as the "triton" backend.

Each implementation imports its launcher from kernelswap.kernels inside the call, so
importing kernelswap never needs Triton.

The kernel (kernels/sparse24_gemv.py) streams the compressed weight once per call and
expands it in registers: a memory-bound path for small M. Past MAX_M tokens the weight
is re-read once per 64-row tile of x and a dense GEMM on the decompressed weight (the
"torch" backend) or sparse tensor cores (the "cuda" backend) win; `supports` says so.
"""
from __future__ import annotations

import torch

from ._prepared import PreparedWeights, splitk_counters
from .backend import register, triton_interpreting
from .int8 import quantize_per_token_ref
from .sparse24 import check_meta_valid

# Largest M the Triton kernel serves: 64 is the largest x tile of its tensor-core mode, so up
# to here the weight stream is read once. The "cuda" backend is tried first: its 2:4 GEMV serves
# M <= gemv_cuda.GEMV_UP_TO_M (8) and its sm_90a sparse24_linear GEMM declines
# M <= sparse24_cuda.SPARSE24_TRITON_UP_TO_M = 16 (measured there), so this kernel serves M 9-16; the sm_90a int8 2:4 GEMM and the sm_80 GEMMs take
# every M they can. Where no CUTLASS 2:4 GEMM runs (GPU, build, shape), this kernel serves
# up to 64; the crossover with dense decompress + cuBLAS at M 17-64 was not measured.
MAX_M = 64

# Metadata is checked once per weight buffer (the reference checks it every call; a
# kernel that trusted a bad nibble would silently pick the wrong x column).
_META_CHECKED = PreparedWeights("sparse24 meta validated")


def _check_meta_once(op: str, meta: torch.Tensor) -> None:
    _META_CHECKED.get((meta,), lambda: check_meta_valid(op, meta) or True)


def _common_reason(x: torch.Tensor) -> str | None:
    m = x.shape[0]
    if m > MAX_M:
        return (f"M={m} tokens > {MAX_M}: the memory-bound kernel re-reads the weight per 64 tokens; "
                f"dense decompress + cuBLAS or sparse tensor cores are faster")
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 0):
        return "needs an sm_80 or newer GPU (bf16 / int8 tensor-core tl.dot)"
    return None


def _float_supports(x, values, meta, bias):
    if values.dtype != x.dtype:
        return f"values are {values.dtype} but x is {x.dtype}; the kernel multiplies them in one dtype"
    if x.dtype == torch.float32 and x.is_cuda:
        return "fp32 activations on the GPU: dense decompress + cuBLAS serve them"
    if x.dtype == torch.bfloat16 and triton_interpreting():
        return "the Triton interpreter rounds bf16 toward zero and cannot run a bf16 tl.dot"
    return _common_reason(x)


def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 activations with quantize_per_token_ref's numerics: the Triton kernel
    (bit-exact with it, x read once) where present, else the reference itself. Called
    directly rather than through the op so a forced "triton" backend does not refuse it."""
    try:
        from kernelswap.kernels.int8_quant import quantize_per_token
    except ImportError:
        return quantize_per_token_ref(x)
    return quantize_per_token(x)


def _int8_supports(x, values, meta, w_scale, bias):
    return _common_reason(x)


def _prepare(op: str):
    def prepare(values, meta, *rest):
        if meta.is_cuda:
            _check_meta_once(op, meta)  # a sync (bool of a reduction): never inside capture
        splitk_counters(values)
    return prepare


@register("sparse24_linear", "triton", supports=_float_supports, prepare=_prepare("sparse24_linear"))
def _sparse24_linear_triton(x, values, meta, bias):
    from kernelswap.kernels.sparse24_gemv import sparse24_linear

    _check_meta_once("sparse24_linear", meta)
    return sparse24_linear(x, values, meta, bias, counters=splitk_counters(values))


@register("sparse24_int8_linear", "triton", supports=_int8_supports, prepare=_prepare("sparse24_int8_linear"))
def _sparse24_int8_linear_triton(x, values, meta, w_scale, bias):
    from kernelswap.kernels.sparse24_gemv import sparse24_int8_linear

    _check_meta_once("sparse24_int8_linear", meta)
    if x.shape[0] == 0:
        return x.new_empty((0, values.shape[0]))
    q, a_scale = _quantize(x)
    return sparse24_int8_linear(q, a_scale, values, meta, w_scale, bias, x.dtype, counters=splitk_counters(values))
