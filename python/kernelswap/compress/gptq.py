"""GPTQ: accurate post-training quantization by second-order error compensation.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323).

For a Linear with weight W (N, K) and calibration inputs X, GPTQ minimises
||W X^T - Q X^T||^2 column by column: quantize column j, then spread its error over the
columns not yet quantized with the inverse Hessian H^-1 (H = X^T X), using the upper
Cholesky factor U of H^-1 so that one row of U gives the update:
    err    = (w_j - q_j) / U[j, j]
    W[:, j+1:] -= err U[j, j+1:]
Columns go in blocks of 128 (lazy batch updates). The result is returned in exactly the
format of kernelswap.packing.quantize_int4 (Int4Weight: contiguous groups along K), so
Int4Linear serves it unchanged. Two orders, both from the paper's code:
  act_order=False  columns left to right; each group's scale and zero point are fixed
                   when the sweep reaches its first column, from the weights as updated
                   so far (quantize_int4's arithmetic on that slice, after the range search
                   below with search_grid).
  act_order=True   columns by decreasing H[j, j] (the most activated inputs first, while
                   the most columns are left to absorb their error), with "static groups":
                   every group's grid is fixed up front from the original weights, so the
                   groups stay contiguous in K whatever the order.
With search_grid a group's grid is the range shrink with the lowest H-weighted group error
(awq.search_clip; the paper's code has an unweighted MSE grid search).
Dead inputs (H[j, j] == 0) get H[j, j] = 1 and a zero weight column; the diagonal is
dampened by `damp` times its mean, as in the paper's code.

Float targets (asymmetric calibration: Li et al., "GPTQv2: Efficient Finetuning-Free
Quantization with Asymmetric Calibration", ICML 2025). When the earlier layers are already
quantized, this layer's input X differs from the float model's X_f, and the aim is the float
output: min ||X_f W^T - X Q^T||^2. With S = X^T (X_f - X) (calibration.Stats.shift) that equals
||X (W' - Q)^T||^2 + const for the least-squares weight W' = W + W S^T H^-1 (float_target, H
dampened as above), so the same sweep on W' with the same H solves it. The paper folds
that term into the sweep instead; the objective is the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from typing import Callable

from ..ops.fp8 import quantize_fp8_rows
from ..ops.int4 import SYMMETRIC_ZERO
from ..packing import Int4Weight, pack_int4, quantize_fp8, quantize_int4

BLOCK = 128


def prepare_hessian(hessian: Tensor, w: Tensor, kp: int, damp: float,
                    perm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(W padded to kp columns with dead columns zeroed, upper Cholesky factor of (H + damp)^-1),
    both with their columns in the order `perm` when given."""
    k = w.shape[1]
    h = torch.zeros(kp, kp, dtype=torch.float64, device=w.device)
    h[:k, :k] = hessian.double()
    w = F.pad(w.float(), (0, kp - k))
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(kp, dtype=h.dtype, device=h.device)
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return w, torch.linalg.cholesky(hinv, upper=True).float()


def float_target(w: Tensor, hessian: Tensor, shift: Tensor, damp: float) -> Tensor:
    """W + W S^T (H + damp)^-1, S = X^T (X_float - X): the least-squares weight for X_float W^T from X."""
    h = hessian.double().clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    h += damp * diag.mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return (w.double() + torch.linalg.solve(h, shift.double() @ w.double().T).T).float()


def sweep(w: Tensor, u: Tensor, order: Tensor, quantize: Callable[[Tensor, int, int], Tensor]) -> None:
    """The GPTQ sweep over w's columns (already in `order`, u the Cholesky factor of prepare_hessian):
    quantize(w1, i, col) gives column i of the current block w1 (the weights as updated so far;
    col = its place in K) quantized and dequantized, and its error is spread over the columns after
    it, lazily in blocks of BLOCK columns. Updates w in place."""
    kp = w.shape[1]
    for b0 in range(0, kp, BLOCK):
        b1 = min(b0 + BLOCK, kp)
        w1, u1 = w[:, b0:b1].clone(), u[b0:b1, b0:b1]
        err1 = torch.zeros_like(w1)
        for i in range(b1 - b0):
            x = w1[:, i].clone()
            q = quantize(w1, i, int(order[b0 + i]))
            e = (x - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        w[:, b1:] -= err1 @ u[b0:b1, b1:]


def gptq_int4(w: Tensor, hessian: Tensor, group_size: int = 128, symmetric: bool = False,
              damp: float = 0.01, act_order: bool = True, search_grid: bool = True,
              shift: Tensor | None = None) -> Int4Weight:
    """GPTQ-quantize one (N, K) weight given H = X^T X (K, K); Int4Weight as packing.quantize_int4 makes.

    shift = X^T (X_float - X) (calibration.Stats.shift) makes the target the float model's output."""
    if shift is not None:
        w = float_target(w, hessian, shift, damp)
    n, k = w.shape
    kp = -(-k // group_size) * group_size
    perm = None
    from .awq import clamp_groups, search_clip
    if act_order:
        if search_grid:
            w_grid = clamp_groups(w.float(), search_clip(w, hessian, group_size, symmetric), group_size, symmetric)
        else:
            w_grid = w
        static = quantize_int4(w_grid, group_size, symmetric)  # every group's grid, from the original weights
        diag = F.pad(torch.diagonal(hessian).float(), (0, kp - k))
        perm = torch.argsort(diag, descending=True, stable=True)
    w, u = prepare_hessian(hessian, w, kp, damp, perm)
    order = perm if perm is not None else torch.arange(kp, device=w.device)
    codes = torch.zeros(n, kp, dtype=torch.uint8, device=w.device)
    if act_order:
        scales, zeros = static.scales, static.zeros
        all_s = scales.float()
        all_z = torch.full_like(all_s, SYMMETRIC_ZERO) if symmetric else zeros.float()
    else:
        scales = torch.empty(n, kp // group_size, dtype=torch.float16, device=w.device)
        zeros = None if symmetric else torch.empty(n, kp // group_size, dtype=torch.uint8, device=w.device)
    grid: list = [None, None]  # the current group's (scale, zero point)

    def quantize(w1: Tensor, i: int, col: int) -> Tensor:
        g = col // group_size
        if act_order:
            grid[:] = all_s[:, g], all_z[:, g]
        elif col % group_size == 0:  # the group's grid, from the weights as updated so far
            wg = w1[:, i:i + group_size]  # BLOCK % group_size == 0
            if search_grid:
                hg = hessian[col:col + group_size, col:col + group_size]
                hg = F.pad(hg, (0, group_size - hg.shape[1], 0, group_size - hg.shape[0]))
                wg = clamp_groups(wg, search_clip(wg, hg, group_size, symmetric), group_size, symmetric)
            gq = quantize_int4(wg, group_size, symmetric)
            scales[:, g] = gq.scales[:, 0]
            grid[:] = gq.scales[:, 0].float(), (torch.full_like(gq.scales[:, 0].float(), SYMMETRIC_ZERO) if symmetric
                                                 else gq.zeros[:, 0].float())
            if zeros is not None:
                zeros[:, g] = gq.zeros[:, 0]
        s, z = grid
        x = w1[:, i]
        c = (torch.round(x / s) + z).clamp_(0, 15) if not symmetric else \
            torch.round(x / s).clamp_(-8, 7) + SYMMETRIC_ZERO
        codes[:, col] = c.to(torch.uint8)
        return (c - z) * s

    sweep(w, u, order, quantize)
    return Int4Weight(pack_int4(codes), scales, zeros, group_size, k)


def gptq_fp8(w: Tensor, hessian: Tensor, damp: float = 0.01, act_order: bool = True,
             shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GPTQ with the e4m3 grid of packing.quantize_fp8: (w_q (N, K) float8_e4m3fn, w_scale (N,) fp32).

    Each row's scale is fixed up front from the (float-target) weights, max |w_n| / 448, as RTN
    makes it; the sweep then rounds each column to e4m3 at that scale (saturating at +-448: the
    updated weights may grow past the original range) and spreads the error as for int4."""
    if shift is not None:
        w = float_target(w, hessian, shift, damp)
    n, k = w.shape
    scale = quantize_fp8(w)[1]
    perm = torch.argsort(torch.diagonal(hessian).float(), descending=True, stable=True) if act_order else None
    w, u = prepare_hessian(hessian, w, k, damp, perm)
    order = perm if perm is not None else torch.arange(k, device=w.device)
    codes = torch.zeros(n, k, dtype=torch.float8_e4m3fn, device=w.device)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)

    def quantize(w1: Tensor, i: int, col: int) -> Tensor:
        c = quantize_fp8_rows(w1[:, i:i + 1], scale)[:, 0]
        codes[:, col] = c
        return c.float() * safe

    sweep(w, u, order, quantize)
    return codes, scale


__all__ = ["float_target", "gptq_fp8", "gptq_int4", "prepare_hessian", "sweep"]
