"""Int8Linear: nn.Linear with int8 per-output-channel weights.

mode "int8"         W8A8: activations quantized per token in the op (ops.int8_linear).
mode "int8-weight"  W8A16: float activations, int8 weights (ops.int8_weight_linear).

Buffers (format of kernelswap.ops.int8, made by kernelswap.packing.quantize_int8):
  w_q      (N, K) int8
  w_scale  (N,)   float32, fixed: .half() does not convert it
  bias     (N,)   the float layer's dtype, or None
"""
from __future__ import annotations

import torch
from torch import nn

from ..packing import quantize_int8
from ._base import LinearModule, check_features, check_linear

MODES = ("int8", "int8-weight")


class Int8Linear(LinearModule):
    FIXED_DTYPE_BUFFERS = ("w_scale",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "int8", *,
                 device=None, dtype: torch.dtype = torch.float32, name: str | None = None):
        super().__init__(name, device)
        check_features(self.where, in_features=in_features, out_features=out_features)
        if mode not in MODES:
            raise ValueError(f"{self.where}: mode must be one of {MODES} ('int8': W8A8, 'int8-weight': W8A16), "
                             f"got {mode!r}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.OP = "int8_linear" if mode == "int8" else "int8_weight_linear"
        self.register_buffer("w_q", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("w_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, mode: str = "int8", name: str | None = None) -> "Int8Linear":
        check_linear(cls.__name__, linear, name)
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, device=w.device,
                dtype=w.dtype, name=name)
        w_q, w_scale = quantize_int8(w)
        return m.fill_from(linear, w_q=w_q, w_scale=w_scale)

    def op_args(self) -> tuple:
        b = self._buffers
        return b["w_q"], b["w_scale"], b["bias"]

    def recipe_config(self) -> dict:
        return {"recipe": self.mode}

    def extra_repr(self) -> str:
        what = "W8A8 (dynamic per-token int8 activations)" if self.mode == "int8" else "W8A16"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mode={self.mode!r}: {what}")
