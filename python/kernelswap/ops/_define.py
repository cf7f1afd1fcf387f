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
"""
from __future__ import annotations

from typing import Callable

import torch

_LIB = torch.library.Library("kernelswap", "FRAGMENT")


class Op:
    """A defined op: call it like the function it wraps; `.register_fake` adds the fake."""

    def __init__(self, name: str, fn: Callable):
        self.name = name
        self.__doc__ = fn.__doc__
        self.overload = getattr(torch.ops.kernelswap, name).default

    def __call__(self, *args, **kwargs):
        return self.overload(*args, **kwargs)

    def register_fake(self, fake: Callable) -> Callable:
        torch.library.register_fake(f"kernelswap::{self.name}", fake, lib=_LIB)
        return fake


def op(schema: str) -> Callable[[Callable], Op]:
    """Decorator: define kernelswap::<schema> with the decorated function as its implementation."""

    def deco(fn: Callable) -> Op:
        name = schema.split("(", 1)[0]
        _LIB.define(schema)
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        return Op(name, fn)

    return deco
