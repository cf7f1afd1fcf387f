"""Sparse24Linear: nn.Linear with 2:4 structured-sparse weights.

int8=False  float values (the layer's dtype; fp16/bf16 on the GPU), ops.sparse24_linear.
int8=True   int8 values with a per-channel scale, activations quantized per token
            (W8A8 on the sparse weight), ops.sparse24_int8_linear.

from_float prunes by magnitude (keep the 2 largest |w| of every 4 along K,
kernelswap.packing.prune_24); pass prune=False for a weight that is already 2:4.
Buffers (format of kernelswap.ops.sparse24, made by kernelswap.packing.compress_24):
  values   (N, Kp // 2)  float (follows .half() etc.) or int8; Kp = K padded to 8
  meta     (N, Kp // 8)  uint8
  w_scale  (N,)          float32 when int8, fixed dtype; else None
  bias     (N,)          the float layer's dtype, or None
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.sparse24 import K_MULTIPLE
from ..packing import compress_24, is_24_sparse, prune_24, quantize_int8
from ._base import LinearModule, check_features, check_linear


def sparse24_weight(cls_name: str, linear: nn.Linear, prune: bool, name: str | None) -> torch.Tensor:
    """from_float's 2:4 weight: linear's weight pruned by magnitude when prune, else checked to be 2:4."""
    w = linear.weight.detach()
    if prune:
        return prune_24(w)
    if not is_24_sparse(w):
        raise ValueError(f"{cls_name}.from_float" + (f" ({name!r})" if name else "") +
                         ": prune=False but the weight is not 2:4 sparse; pass prune=True "
                         "(magnitude pruning) or prune it with kernelswap.packing.prune_24")
    return w


class Sparse24Linear(LinearModule):
    FIXED_DTYPE_BUFFERS = ("w_scale",)
    method = "magnitude"  # how the mask was chosen (ks.Sparse24(method=...)); kept in recipe_config

    def __init__(self, in_features: int, out_features: int, bias: bool = True, int8: bool = False, *,
                 device=None, dtype: torch.dtype = torch.float32, name: str | None = None):
        super().__init__(name, device)
        check_features(self.where, in_features=in_features, out_features=out_features)
        if not dtype.is_floating_point:
            raise TypeError(f"{self.where}: dtype is the float dtype of the layer, got {dtype}")
        self.in_features, self.out_features, self.int8 = in_features, out_features, bool(int8)
        self.OP = "sparse24_int8_linear" if int8 else "sparse24_linear"
        kp = math.ceil(in_features / K_MULTIPLE) * K_MULTIPLE
        values_dtype = torch.int8 if int8 else dtype
        self.register_buffer("values", torch.zeros(out_features, kp // 2, dtype=values_dtype, device=device))
        # All-zero meta nibbles would name position 0 twice; 0b0100 (positions 0, 1) is valid.
        self.register_buffer("meta", torch.full((out_features, kp // 8), 0x44, dtype=torch.uint8, device=device))
        self.register_buffer("w_scale", torch.ones(out_features, dtype=torch.float32, device=device)
                             if int8 else None)
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, int8: bool = False, prune: bool = True,
                   name: str | None = None) -> "Sparse24Linear":
        check_linear(cls.__name__, linear, name)
        w = sparse24_weight(cls.__name__, linear, prune, name)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, int8, device=w.device,
                dtype=w.dtype, name=name)
        w_scale = None
        if int8:
            w, w_scale = quantize_int8(w)  # zeros stay zero, so the codes are still 2:4
        values, meta = compress_24(w)
        return m.fill_from(linear, values=values, meta=meta, w_scale=w_scale)

    def op_args(self) -> tuple:
        b = self._buffers
        if self.int8:
            return b["values"], b["meta"], b["w_scale"], b["bias"]
        return b["values"], b["meta"], b["bias"]

    def recipe_config(self) -> dict:
        cfg = {"recipe": "sparse24-int8" if self.int8 else "sparse24"}
        return cfg if self.method == "magnitude" else {**cfg, "method": self.method}

    def extra_repr(self) -> str:
        vals = "int8 values, W8A8" if self.int8 else f"{str(self.values.dtype).replace('torch.', '')} values"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, 2:4 sparse, {vals}")
