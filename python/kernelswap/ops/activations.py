"""The activations a fused epilogue can apply: one list for the op, the layers and the kernels.

ACTIVATIONS is the list; a name's index in it is the code the Triton kernels compile
against (kernels/activations.py branches on it; launchers receive the code, not the name).
`apply_activation` is the plain-torch form the references, the torch backend and the
layers use; `activation_name` maps a module or function found in a model to its name.
Triton-free, so importing it never needs Triton.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("identity", "relu", "relu6", "silu", "hardswish")
_FNS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish}
_MODULES = ((nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"),
            (nn.Identity, "identity"))
_FUNCTIONS: dict[Callable, str] = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
                                   F.relu6: "relu6", F.silu: "silu", F.hardswish: "hardswish"}


def activation_code(name: str) -> int:
    """The code of `name` in the Triton kernels (its index in ACTIVATIONS)."""
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}") from None


def apply_activation(y: Tensor, activation: str, inplace: bool = False) -> Tensor:
    if activation == "identity":
        return y
    fn = _FNS.get(activation)
    if fn is None:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    return fn(y, inplace=inplace)


def activation_name(act) -> str | None:
    """'relu' etc. for an activation module, function or name the op can fuse; None otherwise."""
    if act is None:
        return "identity"
    if isinstance(act, str):
        return act if act in ACTIVATIONS else None
    if isinstance(act, nn.Module):
        if type(act) is nn.Hardtanh and act.min_val == 0.0 and act.max_val == 6.0:
            return "relu6"
        return next((n for cls, n in _MODULES if type(act) is cls), None)
    return _FUNCTIONS.get(act)
