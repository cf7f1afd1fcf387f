"""Fp8Linear: nn.Linear with float8_e4m3fn weights (W8A8 in FP8), dense or 2:4 sparse.

sparse24=False  "fp8": e4m3 weights with a per-output-channel scale, activations quantized
                per token to e4m3 in the op (ops.fp8_linear).
sparse24=True   "sparse24-fp8": the same on a 2:4-pruned weight (ops.sparse24_fp8_linear);
                from_float prunes by magnitude (kernelswap.packing.prune_24) unless prune=False.
fast_accum      dense only: the op's fast_accum (FP8 fast accumulation in the Hopper GEMM from
                M = 65 tokens; ks.Fp8(fast_accum=True)). Off by default.

Hopper (sm_90a, bfloat16 layers) runs the CUTLASS FP8 GEMMs; anywhere else the op's reference
serves, with the reason in the dispatcher's answer (kernelswap.ops.fp8_cuda).

Buffers (formats of kernelswap.ops.fp8; the e4m3 tensors and w_scale keep their dtype under
.half() / .bfloat16(), like int8 codes):
  dense   w_q      (N, K)        float8_e4m3fn  (kernelswap.packing.quantize_fp8)
  sparse  values   (N, Kp // 2)  float8_e4m3fn, meta (N, Kp // 8) uint8 (kernelswap.packing.compress_24)
  w_scale (N,) float32; bias (N,) the float layer's dtype, or None
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.fp8 import FP8
from ..ops.sparse24 import K_MULTIPLE
from ..packing import compress_24, quantize_fp8
from ._base import LinearModule, check_features, check_linear
from .sparse24_linear import sparse24_weight


class Fp8Linear(LinearModule):
    FIXED_DTYPE_BUFFERS = ("w_q", "values", "w_scale")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, sparse24: bool = False, *,
                 device=None, dtype: torch.dtype = torch.float32, name: str | None = None, fast_accum: bool = False):
        super().__init__(name, device)
        check_features(self.where, in_features=in_features, out_features=out_features)
        if not dtype.is_floating_point or dtype == FP8:
            raise TypeError(f"{self.where}: dtype is the float dtype of the layer (its bias and output), got {dtype}")
        if not isinstance(fast_accum, bool):
            raise TypeError(f"{self.where}: fast_accum must be a bool, got {type(fast_accum).__name__}")
        if fast_accum and sparse24:
            raise ValueError(f"{self.where}: fast_accum is for the dense FP8 GEMM; the 2:4 one has no "
                             f"fast-accumulation kernel (use sparse24=False, or fast_accum=False)")
        self.in_features, self.out_features, self.sparse24 = in_features, out_features, bool(sparse24)
        self.fast_accum = fast_accum
        # How the weights were made, kept in recipe_config: sparse24, the mask (ks.Sparse24Fp8(method=...));
        # dense, the e4m3 rounding (ks.Fp8(method="rtn" | "gptq")).
        self.method = "magnitude" if sparse24 else "rtn"
        self.OP = "sparse24_fp8_linear" if sparse24 else "fp8_linear"
        if sparse24:
            kp = math.ceil(in_features / K_MULTIPLE) * K_MULTIPLE
            self.register_buffer("values", torch.zeros(out_features, kp // 2, dtype=FP8, device=device))
            # All-zero meta nibbles would name position 0 twice; 0b0100 (positions 0, 1) is valid.
            self.register_buffer("meta", torch.full((out_features, kp // 8), 0x44, dtype=torch.uint8, device=device))
        else:
            self.register_buffer("w_q", torch.zeros(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("w_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, sparse24: bool = False, prune: bool = True,
                   name: str | None = None, fast_accum: bool = False) -> "Fp8Linear":
        check_linear(cls.__name__, linear, name)
        w = sparse24_weight(cls.__name__, linear, prune, name) if sparse24 else linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, sparse24, device=w.device,
                dtype=w.dtype, name=name, fast_accum=fast_accum)
        w_q, w_scale = quantize_fp8(w)  # zeros stay zero, so a 2:4 weight stays 2:4
        if not sparse24:
            return m.fill_from(linear, w_q=w_q, w_scale=w_scale)
        values, meta = compress_24(w_q.float())  # float32 holds every e4m3 value exactly
        return m.fill_from(linear, values=values.to(FP8), meta=meta, w_scale=w_scale)

    def op_args(self) -> tuple:
        b = self._buffers
        if self.sparse24:
            return b["values"], b["meta"], b["w_scale"], b["bias"]
        return b["w_q"], b["w_scale"], b["bias"], self.fast_accum

    def recipe_config(self) -> dict:
        if not self.sparse24:
            cfg = {"recipe": "fp8"} if self.method == "rtn" else {"recipe": "fp8", "method": self.method}
            return {**cfg, "fast_accum": True} if self.fast_accum else cfg
        cfg = {"recipe": "sparse24-fp8"}
        return cfg if self.method == "magnitude" else {**cfg, "method": self.method}

    def extra_repr(self) -> str:
        what = "2:4 sparse, e4m3 values" if self.sparse24 else "e4m3 weights" + (", fast_accum" * self.fast_accum)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {what}, W8A8 (dynamic per-token e4m3 activations)")
