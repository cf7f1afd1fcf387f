"""Per-layout runners: a layer's call decided once, then a lookup and the kernel.

A swapped layer calls the same op with the same weights on inputs of a few layouts (a decode
step's x is (batch, 1, K) every time). `bind_tokens(op, check, x, *weights)` (linear ops)
and `bind_plain` (conv_bn_act) make, for one input layout, everything the full path decides
per call: the argument checks, the flattening of leading dims, the contiguous weights, the
backend choice (kernelswap.ops.backend) and, when the chosen implementation offers one, its
own bound form: a plan of _C's raw entry points for this layout (ops/_raw.py: one foreign call,
no dispatcher), or the C++ op with the prepared weight layouts already looked up; a Triton or
torch implementation without one is recorded on its first calls and replayed after that
(ops/_replay.py: its launches and aten ops without the Python between them). What it returns
is a function of the input alone. The layers (kernelswap.nn) keep one runner per input layout;
their forward is then a dict lookup and this function: no checks, no choice, no dispatcher.

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
from . import _replay
from ._define import tracing
from .backend import _choose

Runner = Callable[..., Tensor]


def eager_ok(x: Tensor) -> bool:
    """May a call on x skip the dispatcher (module docstring)? Cheap: it runs per call."""
    return type(x) is Tensor and not (x.requires_grad and torch.is_grad_enabled()) and not tracing()


def _call(impl, args: tuple) -> Callable:
    """impl's function of x alone, the other arguments bound: impl.raw's runner for this layout when it
    makes one, else impl.bind's, else impl.fn with the arguments bound."""
    if impl.raw is not None and (run := impl.raw(*args)) is not None:
        return run
    if impl.bind is not None:
        return impl.bind(*args[1:])
    fn, rest = impl.fn, args[1:]
    call = lambda x: fn(x, *rest)  # noqa: E731
    return _replay.Replayer(call) if _replay.replayable(impl.backend) else call


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
    if x.dim() == 2 and x2 is x:  # contiguous, aligned (M, K): the decode case
        return call, lasting, impl.backend
    lead, k, n = tuple(x.shape[:-1]), x.shape[-1], w[0].shape[0]
    m = math.prod(lead)
    out_shape = (*lead, n)
    if x.data_ptr() % 16:  # this layout starts off a 16-byte boundary: flatten_tokens copies it
        return (lambda x: call(C.flatten_tokens(x)).view(out_shape)), lasting, impl.backend
    if x.is_contiguous():
        if hasattr(call, "for_shape"):  # a raw runner: it takes x as it is (ops/_raw.py)
            return call.for_shape(out_shape), lasting, impl.backend
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
    call = lambda x, residual: fn(x, *mid, residual)  # noqa: E731
    return (_replay.Replayer(call) if _replay.replayable(impl.backend) else call), lasting, impl.backend
