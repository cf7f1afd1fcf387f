"""cuSPARSELt for sparse24_linear (fp16 / bf16 values), registered as a "torch" backend.

  sparse24_linear  torch._cslt_sparse_mm(compressed W, x^T, bias, transpose_result=True):
                   out = x @ W.T + bias as one (M, N) row-major result

torch ships cuSPARSELt (torch.backends.cusparselt); its compressed form of a weight is made
once per weight buffer by torch._cslt_compress from the dense 2:4 weight (our public format
decompressed: kernelswap.ops.sparse24), by the `prepare` hook when the layer's buffers are
made, moved or loaded (where the dispatcher may choose cuSPARSELt: `_chosen_automatically`),
and kept in a PreparedWeights cache with the bias in x's dtype (the
bias cuSPARSELt adds in its epilogue must have the operands' dtype, as torch's own
to_sparse_semi_structured path requires).

Where ours and cuSPARSELt both can serve, which one does is a per-M rule (`preference`,
read by the CUTLASS sm_90a GEMM's `supports` in ops/sparse24_cuda.py): cuSPARSELt from
CSLT_FROM_M tokens on. Everywhere else this backend is reached only after ours declined
(no CUTLASS build, an unaligned shape...), where it beats the dense decompress + cuBLAS
that follows it in the "torch" backend.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._cuda import OUT_DTYPES, aligned
from ._prepared import PreparedWeights
from .backend import Preference, Transient, register
from .sparse24 import check_meta_valid, decompress_24_ref

# From this many tokens on, the dispatcher prefers cuSPARSELt to our CUTLASS sm_90a 2:4 GEMM
# (None: never). H200, 2026-12-03 (benchmarks/never_slower.py at 5f6b864, time over bf16's at
# 4096x14336 / 8192x28672; benchmarks/results/never_slower_mixed.{md,csv}): replayed from a CUDA
# graph, this backend with the transposed-view result (FUSED_TRANSPOSE below) took 0.69 / 0.71
# at M = 512, 0.72 / 0.70 at 2048 and 0.67 / 0.71 at 8192, against our GEMM's 0.78 / 0.72, 0.80 /
# 0.81 and 0.86 / 1.07. But an eager call costs 0.9-2.5 ms (9.8 / 7.4x bf16 at M = 512, 3.0 /
# 1.6x at 2048; torch's own to_sparse_semi_structured F.linear alike: cuSPARSELt's plan is made
# on every call), and a Hugging Face Llama's 1,024-token eager prefill with it took 4.55x of bf16
# (36.8 against 8.1 ms). The dispatcher's choice is per argument layout, not per eager / captured
# call, so cuSPARSELt serves no M automatically. Only the sm_90a GEMM reads this.
CSLT_FROM_M: int | None = None

# cuSPARSELt's shape rules for 16-bit operands (torch's SparseSemiStructuredTensorCUSPARSELT
# constraints): the sparse operand's rows and columns multiples of 16, the dense operand's
# multiples of 8 (x is padded to that many rows; K is the weight's, so it is a multiple of 16).
ALIGN_SPARSE = 16
ALIGN_DENSE_M = 8

_CSLT = PreparedWeights("sparse24 -> cuSPARSELt compressed")
_BIAS = PreparedWeights("bias -> the activation dtype (cuSPARSELt epilogue)")


@functools.lru_cache(maxsize=None)
def available_reason() -> str | None:
    """Why this torch cannot run cuSPARSELt (None: it can). Looked up once per process."""
    if not torch.backends.cusparselt.is_available():
        return "this torch build has no cuSPARSELt (torch.backends.cusparselt.is_available() is False)"
    return None


def static_reason(x: torch.Tensor, values: torch.Tensor) -> str | None:
    """Why cuSPARSELt cannot serve x @ W.T for these layouts, from dtypes and shapes alone
    (None: it can). Needs no GPU, so the CPU tests check it."""
    k, n = x.shape[1], values.shape[0]
    if x.dtype not in OUT_DTYPES:
        return f"x is {x.dtype}; cuSPARSELt's 2:4 GEMM here takes bfloat16 / float16"
    if values.dtype != x.dtype:
        return f"values are {values.dtype} but x is {x.dtype}; cuSPARSELt multiplies one dtype"
    if values.shape[1] * 2 != k:
        return f"x has K={k} but values hold Kp={values.shape[1] * 2} (padded K); cuSPARSELt needs K = Kp"
    if k % ALIGN_SPARSE or n % ALIGN_SPARSE:
        return f"K={k} and N={n} must be multiples of {ALIGN_SPARSE} (cuSPARSELt's sparse operand)"
    if not aligned(x):
        return "x is not 16-byte aligned (an offset view); cuSPARSELt reads 16-byte vectors"
    return available_reason()


def preference(x: torch.Tensor, values: torch.Tensor) -> Preference | None:
    """The per-M rule: a Preference reason for our GEMM to decline in favour of cuSPARSELt
    (M >= CSLT_FROM_M and cuSPARSELt can serve these layouts), else None."""
    m = x.shape[0]
    if CSLT_FROM_M is None or m < CSLT_FROM_M or static_reason(x, values) is not None:
        return None
    return Preference(f"M={m} >= {CSLT_FROM_M}: cuSPARSELt (torch backend) serves here "
                      f"(CSLT_FROM_M in ops/sparse24_cslt.py)")


def _prepared(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """cuSPARSELt's compressed weight, made once per weight buffer (K = Kp: static_reason)."""
    def make():
        check_meta_valid("sparse24_linear", meta)
        return torch._cslt_compress(decompress_24_ref(values, meta).contiguous())
    return _CSLT.get((values, meta), make)


def _bias_as(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if bias is None or bias.dtype == dtype:
        return bias
    return _BIAS.get((bias,), lambda: bias.to(dtype).contiguous())


def _supports(x, values, meta, bias):
    why = static_reason(x, values)
    if why is None and torch.cuda.is_current_stream_capturing() and not _CSLT.holds((values, meta)):
        # Compressing here would leave the compressed weight in the graph's private pool.
        return Transient("capturing, and the cuSPARSELt weight was not prepared (kernelswap.prepare(model) "
                         "or .to(device) before capture makes it)")
    return why


def _chosen_automatically(values) -> bool:
    """Whether the dispatcher picks cuSPARSELt for these weights at some M: from CSLT_FROM_M on
    where our sm_90a GEMM can serve them, past the GEMV where no CUTLASS GEMM can. Elsewhere
    the compressed copy (~0.56x of the dense weight) is not made at prepare time: a forced
    torch backend then makes it on its first eager call."""
    from . import sparse24_cuda  # here, not at import: sparse24_cuda imports this module

    if sparse24_cuda._sm90_weights_reason(values) is None:
        return CSLT_FROM_M is not None
    return sparse24_cuda._sm80_weights_reason(values) is not None


def _prepare(values, meta, bias):
    if not values.is_cuda or values.dtype not in OUT_DTYPES or available_reason() is not None:
        return
    kp, n = values.shape[1] * 2, values.shape[0]
    if kp % ALIGN_SPARSE or n % ALIGN_SPARSE or not _chosen_automatically(values):
        return
    _prepared(values, meta)
    _bias_as(bias, values.dtype)


# Whether cuSPARSELt writes the product as (M, N) row-major itself (transpose_result=True) or as
# the (N, M) row-major W @ x^T it computes, returned as its (M, N) transposed view (False: what
# torch's own to_sparse_semi_structured F.linear does). H200, 2026-12-01
# (benchmarks/results/never_slower.md): torch's path took 0.70 / 0.68 of bf16 at M = 512 where
# this backend, with transpose_result=True, took 0.97 / 0.83 (4096x14336 / 8192x28672).
FUSED_TRANSPOSE = False


def sparse_mm_rows(mm, w_c: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) @ W.T + bias -> (M, N) through `mm` (torch._cslt_sparse_mm's schema): W is the
    left (sparse) operand, x^T the right one, padded to ALIGN_DENSE_M rows of x. With
    FUSED_TRANSPOSE the result is (M, N) row-major; without, it is the (M, N) transposed view of
    cuSPARSELt's (N, M) row-major product (strides (1, M + pad)), as torch's sparse F.linear returns."""
    m = x.shape[0]
    pad = -m % ALIGN_DENSE_M
    xp = F.pad(x, (0, 0, 0, pad)) if pad else x
    out = mm(w_c, xp.t(), bias, None, None, FUSED_TRANSPOSE)
    if FUSED_TRANSPOSE:  # allocated (M + pad, N), row-major
        return out[:m] if pad else out
    return (out[:, :m] if pad else out).t()  # allocated (N, M + pad), row-major


def _bind(values, meta, bias):
    # values.dtype is x's (static_reason), so the bias is looked up once here, not per call.
    w_c, b = _prepared(values, meta), _bias_as(bias, values.dtype)
    mm = torch.ops.aten._cslt_sparse_mm.default
    return lambda x: sparse_mm_rows(mm, w_c, x, b)


# first=True: tried before the dense decompress + cuBLAS of the same backend (ops/sparse24.py).
@register("sparse24_linear", "torch", supports=_supports, prepare=_prepare, bind=_bind, first=True)
def _sparse24_linear_cslt(x, values, meta, bias):
    return _bind(values, meta, bias)(x)
