"""SparseGPT: one-shot pruning with second-order weight reconstruction, 2:4 pattern.

Frantar, Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", ICML 2023 (arXiv:2301.00774).

The same column sweep as GPTQ (see gptq.py) with "round to zero or keep" in place of
rounding: with U the upper Cholesky factor of H^-1 (H = X^T X + damping), at every
4th column the mask of the next 4 columns is chosen per row by the OBS saliency
w^2 / U[j, j]^2 (the 2 smallest are pruned), then column by column the pruned weights
are set to zero and their error is spread over the remaining columns:
    err = (w_j - q_j) / U[j, j];   W[:, j+1:] -= err U[j, j+1:]
The kept weights end up changed (reconstructed), the result is exactly 2:4.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .gptq import BLOCK, prepare_hessian


def sparsegpt_24(w: Tensor, hessian: Tensor, damp: float = 0.01) -> Tensor:
    """2:4-prune (N, K) `w` given H = X^T X (K, K), updating the kept weights; returns w.dtype (N, K)."""
    n, k = w.shape
    kp = -(-k // 4) * 4
    wf, u = prepare_hessian(hessian, w, kp, damp)
    for b0 in range(0, kp, BLOCK):
        b1 = min(b0 + BLOCK, kp)
        w1, u1 = wf[:, b0:b1].clone(), u[b0:b1, b0:b1]
        err1 = torch.zeros_like(w1)
        d = torch.diagonal(u1)
        prune = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(b1 - b0):
            if i % 4 == 0:  # BLOCK % 4 == 0, so groups of 4 never straddle blocks
                saliency = w1[:, i:i + 4].square() / d[i:i + 4].square()[None, :]
                drop = saliency.topk(2, dim=1, largest=False).indices
                prune[:, i:i + 4].scatter_(1, drop, True)
            x = w1[:, i]
            q = torch.where(prune[:, i], torch.zeros_like(x), x)
            e = (x - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        wf[:, b0:b1] = w1
        wf[:, b1:] -= err1 @ u[b0:b1, b1:]
    return wf[:, :k].to(w.dtype)


__all__ = ["sparsegpt_24"]
