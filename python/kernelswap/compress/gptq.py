"""GPTQ: accurate post-training quantization by second-order error compensation.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323).

For a Linear with weight W (N, K) and calibration inputs X, GPTQ minimises
||W X^T - Q X^T||^2 column by column: quantize column j, then spread its error over the
columns not yet quantized with the inverse Hessian H^-1 (H = X^T X), using the upper
Cholesky factor U of H^-1 so that one row of U gives the update:
    err    = (w_j - q_j) / U[j, j]
    W[:, j+1:] -= err U[j, j+1:]
Columns go in blocks of 128 (lazy batch updates); each group's scale and zero point
are fixed when the algorithm reaches the group's first column, from the weights as
updated so far, with exactly the arithmetic of kernelswap.packing.quantize_int4, and
the result is returned in that format (Int4Weight), so Int4Linear serves it unchanged.
Dead inputs (H[j, j] == 0) get H[j, j] = 1 and a zero weight column; the diagonal is
dampened by `damp` times its mean, as in the paper's code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.int4 import SYMMETRIC_ZERO
from ..packing import Int4Weight, pack_int4, quantize_int4

BLOCK = 128


def prepare_hessian(hessian: Tensor, w: Tensor, kp: int, damp: float) -> tuple[Tensor, Tensor]:
    """(W padded to kp columns with dead columns zeroed, upper Cholesky factor of (H + damp)^-1)."""
    k = w.shape[1]
    h = torch.zeros(kp, kp, dtype=torch.float64, device=w.device)
    h[:k, :k] = hessian.double()
    w = F.pad(w.float(), (0, kp - k))
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(kp, dtype=h.dtype, device=h.device)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return w, torch.linalg.cholesky(hinv, upper=True).float()


def gptq_int4(w: Tensor, hessian: Tensor, group_size: int = 128, symmetric: bool = False,
              damp: float = 0.01) -> Int4Weight:
    """GPTQ-quantize one (N, K) weight given H = X^T X (K, K); Int4Weight as packing.quantize_int4 makes."""
    n, k = w.shape
    kp = -(-k // group_size) * group_size
    w, u = prepare_hessian(hessian, w, kp, damp)
    codes = torch.zeros(n, kp, dtype=torch.uint8, device=w.device)
    scales = torch.empty(n, kp // group_size, dtype=torch.float16, device=w.device)
    zeros = None if symmetric else torch.empty(n, kp // group_size, dtype=torch.uint8, device=w.device)
    s = z = None
    for b0 in range(0, kp, BLOCK):
        b1 = min(b0 + BLOCK, kp)
        w1, u1 = w[:, b0:b1].clone(), u[b0:b1, b0:b1]
        err1 = torch.zeros_like(w1)
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:  # the group's grid, from the weights as updated so far
                g = col // group_size
                gq = quantize_int4(w1[:, i:i + group_size], group_size, symmetric)  # BLOCK % group_size == 0
                scales[:, g] = gq.scales[:, 0]
                s = gq.scales[:, 0].float()
                z = torch.full_like(s, SYMMETRIC_ZERO) if symmetric else gq.zeros[:, 0].float()
                if zeros is not None:
                    zeros[:, g] = gq.zeros[:, 0]
            x = w1[:, i]
            c = (torch.round(x / s) + z).clamp_(0, 15) if not symmetric else \
                torch.round(x / s).clamp_(-8, 7) + SYMMETRIC_ZERO
            codes[:, col] = c.to(torch.uint8)
            q = (c - z) * s
            e = (x - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        w[:, b1:] -= err1 @ u[b0:b1, b1:]
    return Int4Weight(pack_int4(codes), scales, zeros, group_size, k)


__all__ = ["gptq_int4", "prepare_hessian"]
