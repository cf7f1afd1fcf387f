"""Int4Linear: nn.Linear with group-wise int4 weights and float activations (W4A16).

Buffers (format of kernelswap.ops.int4, made by kernelswap.packing.quantize_int4):
  w_packed  (N, Kp // 2)          uint8, two codes a byte; Kp = K padded to group_size
  scales    (N, Kp // group_size) float16, fixed: .bfloat16()/.float() do not convert it
  zeros     (N, Kp // group_size) uint8 (asymmetric), or None (symmetric)
  bias      (N,)                  the float layer's dtype, or None
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.int4 import GROUP_SIZES
from ..packing import quantize_int4
from ._base import LinearModule, check_features, check_linear


class Int4Linear(LinearModule):
    FIXED_DTYPE_BUFFERS = ("scales",)
    OP = "int4_linear"
    method = "rtn"  # how the codes were chosen (ks.Int4(method=...)); kept in recipe_config

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128,
                 symmetric: bool = False, *, device=None, dtype: torch.dtype = torch.float32,
                 name: str | None = None):
        super().__init__(name, device)
        check_features(self.where, in_features=in_features, out_features=out_features)
        if group_size not in GROUP_SIZES:
            raise ValueError(f"{self.where}: group_size must be one of {GROUP_SIZES}, got {group_size!r}; "
                             f"use ks.Int4(group_size=128) for the default")
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.symmetric = group_size, bool(symmetric)
        kp = math.ceil(in_features / group_size) * group_size
        groups = kp // group_size
        self.register_buffer("w_packed", torch.zeros(out_features, kp // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer("zeros", None if symmetric else
                             torch.zeros(out_features, groups, dtype=torch.uint8, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 128, symmetric: bool = False,
                   name: str | None = None) -> "Int4Linear":
        check_linear(cls.__name__, linear, name)
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, symmetric,
                device=w.device, dtype=w.dtype, name=name)
        q = quantize_int4(w, group_size, symmetric)
        return m.fill_from(linear, w_packed=q.packed, scales=q.scales, zeros=q.zeros)

    def op_args(self) -> tuple:
        b = self._buffers
        return b["w_packed"], b["scales"], b["zeros"], self.group_size, b["bias"]

    def recipe_config(self) -> dict:
        cfg = {"recipe": "int4", "group_size": self.group_size, "symmetric": self.symmetric}
        return cfg if self.method == "rtn" else {**cfg, "method": self.method}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}, "
                f"{'symmetric' if self.symmetric else 'asymmetric'}: W4A16")
