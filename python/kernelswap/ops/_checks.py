"""Argument checks shared by each op's fake (meta) and real implementations.

Every message names the op, the argument and what to do about it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_dtype(op: str, name: str, t: Tensor, dtypes: Sequence[torch.dtype]) -> None:
    if t.dtype not in dtypes:
        raise TypeError(f"kernelswap.{op}: {name} must be {_names(dtypes)}, got "
                        f"{str(t.dtype).replace('torch.', '')}")


def check_dim(op: str, name: str, t: Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"kernelswap.{op}: {name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")


def check_shape(op: str, name: str, t: Tensor, shape: Sequence[int], layout: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"kernelswap.{op}: {name} must have shape {tuple(shape)} {layout}, "
                         f"got {tuple(t.shape)}")


def check_same_device(op: str, x: Tensor, **others: Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"kernelswap.{op}: {name} is on {t.device} but x is on {x.device}; "
                             f"move the layer with .to({x.device}) first")


def check_activation(op: str, x: Tensor) -> None:
    """x: (..., K) floating activation with at least one dimension."""
    check_dtype(op, "x", x, FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"kernelswap.{op}: x must have at least 1 dimension (..., K), got a scalar")


def check_bias(op: str, bias: Tensor | None, n: int) -> None:
    if bias is None:
        return
    check_dtype(op, "bias", bias, FLOAT_DTYPES)
    check_shape(op, "bias", bias, (n,), "(N,)")


def check_k(op: str, x: Tensor, k_weight: int, what: str) -> None:
    if x.shape[-1] != k_weight:
        raise ValueError(f"kernelswap.{op}: x has K={x.shape[-1]} features but {what} has K={k_weight}; "
                         f"the layer expects inputs of shape (..., {k_weight})")


def check_k_padded(op: str, x: Tensor, k_padded: int, multiple: int, what: str) -> None:
    """Packed weights pad K up to `multiple`; x carries the true K."""
    k = x.shape[-1]
    if not (k_padded - multiple < k <= k_padded):
        raise ValueError(f"kernelswap.{op}: x has K={k} features but {what} holds K={k_padded} "
                         f"(padded to a multiple of {multiple}); the layer expects inputs of shape "
                         f"(..., K) with {k_padded - multiple} < K <= {k_padded}")


def flatten_tokens(x: Tensor) -> Tensor:
    """(..., K) -> contiguous, 16-byte aligned (M, K) with unit stride along K, also when M = 0
    (an empty tensor counts as contiguous whatever its strides, so .contiguous() keeps them).
    A contiguous, aligned 2-D x (a decode step's activations) is returned as it is: this runs per
    call. An x that starts off a 16-byte boundary (a view at an odd offset) is copied: every
    kernel may then read it in 16-byte vectors."""
    if x.dim() == 2 and x.is_contiguous() and x.stride(-1) == 1 and x.data_ptr() % 16 == 0:
        return x
    if x.numel() == 0:
        return x.new_empty((math.prod(x.shape[:-1]), x.shape[-1]))
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    return flat if flat.data_ptr() % 16 == 0 else flat.clone()


def unflatten_tokens(y: Tensor, x: Tensor) -> Tensor:
    """(M, N) -> (..., N) with x's leading dims (y itself for a 2-D x)."""
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def tokens_call(plan, check, x: Tensor, *weights):
    """The body of a linear-like op on x (..., K): the plan (backend.Plan) runs the implementation
    chosen for this layout on x flattened to (M, K) and contiguous weights; the leading dims come back."""
    y = plan((x, *weights), check, lambda: (flatten_tokens(x), *(w.contiguous() if isinstance(w, Tensor) else w
                                                                 for w in weights)))
    return unflatten_tokens(y, x)


def tokens_fake(check):
    """The fake (meta) kernel of a linear-like op whose first weight is (N, ...): (..., K) -> (..., N)."""
    def fake(x, *weights):
        check(x, *weights)
        return x.new_empty((*x.shape[:-1], weights[0].shape[0]))
    return fake


def per_token_check(op: str):
    """The argument check of a per-token activation quantizer `op`: x (..., K) float, K > 0."""
    def check(x: Tensor) -> None:
        check_activation(op, x)
        if x.shape[-1] == 0:
            raise ValueError(f"kernelswap.{op}: x has K=0 features; nothing to quantize")
    return check


def per_token_call(plan, check, x: Tensor) -> tuple[Tensor, Tensor]:
    """The body of a per-token quantizer: (codes shaped like x, one fp32 scale per token)."""
    q, s = plan((x,), check, lambda: (flatten_tokens(x),))
    return q.reshape(x.shape), s.reshape(x.shape[:-1])


def per_token_fake(check, dtype: torch.dtype):
    """Its fake: codes of `dtype` shaped like x, fp32 scales of x's leading shape."""
    def fake(x):
        check(x)
        return x.new_empty(x.shape, dtype=dtype), x.new_empty(x.shape[:-1], dtype=torch.float32)
    return fake
