"""Epilogue activations for any kernelswap Triton kernel, picked by a tl.constexpr code.

A kernel takes `ACTIVATION: tl.constexpr` and calls `apply_activation(acc, ACTIVATION)` on
its fp32 accumulator; the branch is resolved at compile time, so each activation costs
only its own few instructions and no kernel is copied per activation. The code is the
activation's index in kernelswap.ops.activations.ACTIVATIONS (identity 0, relu 1, relu6 2,
silu 3, hardswish 4), the one list of names; launchers take the code.

Everything is plain arithmetic and tl.sigmoid (no libdevice, no inline asm), so it
runs under TRITON_INTERPRET=1 too.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def apply_activation(y, ACTIVATION: tl.constexpr):
    """y: fp32 tile of any shape -> act(y), fp32. ACTIVATION: the code (module docstring)."""
    # NaN must stay NaN as in torch.relu; PTX max/min would otherwise drop it.
    if ACTIVATION == 1:  # relu
        y = tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACTIVATION == 2:  # relu6
        y = tl.minimum(tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                       propagate_nan=tl.PropagateNan.ALL)
    elif ACTIVATION == 3:  # silu: y * sigmoid(y)
        y = y * tl.sigmoid(y)
    elif ACTIVATION == 4:  # hardswish: y * relu6(y + 3) / 6
        r6 = tl.minimum(tl.maximum(y + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                        propagate_nan=tl.PropagateNan.ALL)
        y = y * r6 * (1.0 / 6.0)
    return y
