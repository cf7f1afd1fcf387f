"""Per-layout runners: a layer's call decided once, then a lookup and the kernel.

A swapped layer calls the same op with the same weights on inputs of a few layouts (a decode
step's x is (batch, 1, K) every time). `bind_tokens(op, check, x, *weights)` (linear ops)
and `bind_plain` (conv_bn_act) make, for one input layout, everything the full path decides
per call: the argument checks, the flattening of leading dims, the contiguous weights, the
backend choice (kernelswap.ops.backend) and, when the chosen implementation offers one, its
own bound form (e.g. the C++ entry point with the prepared weight layouts already looked
up). What it returns is a function of the input alone. The layers (kernelswap.nn) keep one
runner per input layout; their forward is then a dict lookup and this function: no checks,
no choice, no dispatcher.

A runner is made only for plain eager calls (`eager_ok`): under torch.compile or export
tracing, a TorchDispatchMode (fake tensors), a functorch transform (vmap, grad), or when
x requires grad, the layers call the op through the dispatcher instead, so tracing,
autograd and fake tensors see the registered op as before.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from . import _checks as C
from ._define import tracing
from .backend import _choose

Runner = Callable[..., Tensor]


def eager_ok(x: Tensor) -> bool:
    """May a call on x skip the dispatcher (module docstring)? Cheap: it runs per call."""
    return type(x) is Tensor and not (x.requires_grad and torch.is_grad_enabled()) and not tracing()


def _call(impl, args: tuple) -> Callable:
    """impl's function of x alone, the other arguments bound (impl.bind when it has one)."""
    if impl.bind is not None:
        return impl.bind(*args[1:])
    fn, rest = impl.fn, args[1:]
    return lambda x: fn(x, *rest)


def bind_tokens(op: str, check: Callable[..., None], x: Tensor, *weights) -> tuple[Runner, bool, str] | None:
    """A runner for a linear-like op on x (..., K) -> (..., N), N = weights[0].shape[0];
    (runner, whether it may be kept for this layout, the backend that serves it), or None (no
    runner: call the op). Raises what the op would raise on these arguments."""
    if x.is_meta:
        return None
    check(x, *weights)
    w = tuple(t.contiguous() if isinstance(t, Tensor) else t for t in weights)
    x2 = C.flatten_tokens(x)
    impl, lasting = _choose(op, x2.device, (x2, *w))
    call = _call(impl, (x2, *w))
    if x.dim() == 2 and x2 is x:  # contiguous (M, K): the decode case
        return call, lasting, impl.backend
    lead, k, n = tuple(x.shape[:-1]), x.shape[-1], w[0].shape[0]
    m = math.prod(lead)
    out_shape = (*lead, n)
    if x.is_contiguous():
        return (lambda x: call(x.view(m, k)).view(out_shape)), lasting, impl.backend
    return (lambda x: call(x.reshape(m, k).contiguous()).view(out_shape)), lasting, impl.backend


def bind_plain(op: str, check: Callable[..., None], args: tuple) -> tuple[Runner, bool, str] | None:
    """A runner for an op whose implementations take the op's own arguments (conv_bn_act, its
    int lists as lists). The runner takes the tensors that vary per call, x and the trailing
    residual: run(x, residual). Returns as bind_tokens does."""
    x = args[0]
    if x.is_meta:
        return None
    check(*args)
    impl, lasting = _choose(op, x.device, args)
    fn, mid = impl.fn, args[1:-1]
    return (lambda x, residual: fn(x, *mid, residual)), lasting, impl.backend
