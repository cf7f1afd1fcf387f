"""Defines kernelswap's ops on the PyTorch dispatcher at the lowest per-call cost.

torch.library.custom_op wraps every call in Python layers (an autograd function, output
alias checks, a dynamo-disable frame): a no-op custom op measured 21 us a call against
7.7 us for the same op defined through torch.library.Library (CPU, torch 2.14), and on
the GPU that host time is the whole budget of a decode-size kernel. These ops are
inference-only, so `op` defines each with the plain library API: the schema, one Python
implementation for every device (CompositeExplicitAutograd; the implementation picks the
backend per call, see backend.py) and, through `.register_fake`, the fake (meta) kernel
that torch.compile and CUDA graphs trace with. Each op also has an autograd kernel
(`register_input_grad` / `register_grad_of`): a swapped layer is for inference, but a
gradient that flows through it (a frozen quantized base under a trained head or adapter)
is the right one, never a silent zero.

Calling an `Op` (kernelswap.ops.int8_linear(...); the nn modules call per-layout runners
instead, kernelswap.ops._runner, or the dispatcher when those do not apply) skips the
dispatcher when it has nothing to add: plain tensors, no torch.compile/export tracing, no
TorchDispatchMode (fake tensors, FX proxies), no functorch transform (vmap, grad), no meta tensors (their shapes come from
the registered fake) and no input that requires grad. Then the
implementation runs directly, saving the boxing and unboxing of every argument (on the
H100 machine's host, a dispatcher round trip was about as long as a small kernel).
Anything else goes through torch.ops.kernelswap as before.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

_LIB = torch.library.Library("kernelswap", "FRAGMENT")


class Op:
    """A defined op: call it like the function it wraps; `.register_fake` adds the fake."""

    def __init__(self, name: str, fn: Callable, check: Callable[..., None] | None = None):
        self.name = name
        self.fn = fn
        self.check = check  # the argument checks its fake and implementation share (raise on bad input)
        self.__doc__ = fn.__doc__
        self.overload = getattr(torch.ops.kernelswap, name).default

    def __call__(self, *args, **kwargs):
        if kwargs or not _direct_ok(args):
            return self.overload(*args, **kwargs)
        return self.fn(*args)

    def register_fake(self, fake: Callable) -> Callable:
        torch.library.register_fake(f"kernelswap::{self.name}", fake, lib=_LIB)
        return fake

    def register_input_grad(self, dense_weight: Callable[..., Tensor]) -> None:
        """Autograd for a linear-like op: the gradient of x through the dense float weight
        `dense_weight(*args after x)` (N, Kp), i.e. dx = dy @ W[:, :K], the exact gradient of
        the layer whose weight is the dequantized one. Activation quantization (W8A8) is taken
        as the identity there (the straight-through estimator): its true gradient is zero
        almost everywhere. The weights are buffers and get no gradient."""

        def setup_context(ctx, inputs, output):
            ctx.k, ctx.dtype, ctx.weights = inputs[0].shape[-1], inputs[0].dtype, inputs[1:]

        def backward(ctx, grad):
            w = dense_weight(*ctx.weights)[:, : ctx.k].float()
            gx = (grad.float() @ w).to(ctx.dtype)
            return (gx,) + (None,) * len(ctx.weights)

        torch.library.register_autograd(f"kernelswap::{self.name}", backward, setup_context=setup_context,
                                        lib=_LIB)

    def register_grad_of(self, reference: Callable[..., Tensor]) -> None:
        """Autograd from a differentiable plain-torch reference: backward recomputes
        `reference(*args)` under autograd and takes its gradient for the floating tensor inputs
        that need one (conv_bn_act: x and the residual)."""

        def setup_context(ctx, inputs, output):
            ctx.inputs = inputs

        def backward(ctx, grad):
            inputs = list(ctx.inputs)
            wanted = [i for i, a in enumerate(inputs) if isinstance(a, Tensor) and a.is_floating_point()
                      and ctx.needs_input_grad[i]]
            with torch.enable_grad():
                for i in wanted:
                    inputs[i] = inputs[i].detach().requires_grad_()
                out = reference(*inputs)
                grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad)
            result = [None] * len(inputs)
            for i, g in zip(wanted, grads):
                result[i] = g
            return tuple(result)

        torch.library.register_autograd(f"kernelswap::{self.name}", backward, setup_context=setup_context,
                                        lib=_LIB)


def tracing() -> bool:
    """Is a call seen by something that needs the registered op: torch.compile / export tracing,
    a TorchDispatchMode (fake tensors, FX proxies) or a functorch transform (vmap, grad)?"""
    return (torch.compiler.is_compiling() or bool(torch._C._len_torch_dispatch_stack())
            or torch._C._are_functorch_transforms_active())


def _direct_ok(args: tuple) -> bool:
    """May this call skip the dispatcher (module docstring)?"""
    if tracing():
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


def op(schema: str, check: Callable[..., None] | None = None) -> Callable[[Callable], Op]:
    """Decorator: define kernelswap::<schema> with the decorated function as its implementation;
    `check(*args)` raises on bad arguments (the layers' runners call it once per input layout)."""

    def deco(fn: Callable) -> Op:
        name = schema.split("(", 1)[0]
        _LIB.define(schema)
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        return Op(name, fn, check)

    return deco
