"""Defines kernelswap's ops on the PyTorch dispatcher at the lowest per-call cost.

torch.library.custom_op wraps every call in Python layers (an autograd function, output
alias checks, a dynamo-disable frame): a no-op custom op measured 21 us a call against
7.7 us for the same op defined through torch.library.Library (CPU, torch 2.14), and on
the GPU that host time is the whole budget of a decode-size kernel. These ops are
inference-only, so `op` defines each with the plain library API: the schema, one Python
implementation for every device (CompositeExplicitAutograd; the implementation picks the
backend per call, see backend.py) and, through `.register_fake`, the fake (meta) kernel
that torch.compile and CUDA graphs trace with. Without an autograd kernel, a call whose
inputs require grad runs through PyTorch's autograd fallback and its output has no grad_fn.

Calling an `Op` (kernelswap.ops.int8_linear(...), what the nn modules do) skips the
dispatcher when it has nothing to add: plain tensors, no torch.compile/export tracing, no
TorchDispatchMode (fake tensors, FX proxies), no meta tensors (their shapes come from
the registered fake) and no input that requires grad. Then the
implementation runs directly, saving the boxing and unboxing of every argument (on the
H100 machine's host, a dispatcher round trip was about as long as a small kernel).
Anything else goes through torch.ops.kernelswap as before.
"""
from __future__ import annotations

from typing import Callable

import torch

_LIB = torch.library.Library("kernelswap", "FRAGMENT")


class Op:
    """A defined op: call it like the function it wraps; `.register_fake` adds the fake."""

    def __init__(self, name: str, fn: Callable):
        self.name = name
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.overload = getattr(torch.ops.kernelswap, name).default

    def __call__(self, *args, **kwargs):
        if kwargs or not _direct_ok(args):
            return self.overload(*args, **kwargs)
        return self.fn(*args)

    def register_fake(self, fake: Callable) -> Callable:
        torch.library.register_fake(f"kernelswap::{self.name}", fake, lib=_LIB)
        return fake


def _direct_ok(args: tuple) -> bool:
    """May this call skip the dispatcher (module docstring)?"""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) is not torch.Tensor or a.is_meta or (grad and a.requires_grad):
                return False
        elif a is not None and not isinstance(a, _PLAIN):
            return False  # e.g. an FX Proxy standing for a tensor
    return True


_PLAIN = (int, float, str, bool, list, tuple, torch.dtype)


def op(schema: str) -> Callable[[Callable], Op]:
    """Decorator: define kernelswap::<schema> with the decorated function as its implementation."""

    def deco(fn: Callable) -> Op:
        name = schema.split("(", 1)[0]
        _LIB.define(schema)
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        return Op(name, fn)

    return deco
