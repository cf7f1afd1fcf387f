"""Wanda: pruning by weights and activations, here as 2:4 structured sparsity.

Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language
Models", ICLR 2024 (arXiv:2306.11695).

Each weight is scored by its magnitude times the norm of the input feature it
multiplies, S[i, j] = |W[i, j]| * ||X_j||_2 over the calibration rows, and is compared
only with the weights of the same output row; for 2:4 the two highest scores of every
4 consecutive weights along K are kept. No weight update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def keep_24(score: Tensor) -> Tensor:
    """Bool mask (N, K): True at the 2 highest scores of every 4 along K (a ragged tail padded with -inf)."""
    n, k = score.shape
    kp = -(-k // 4) * 4
    groups = F.pad(score.float(), (0, kp - k), value=float("-inf")).reshape(n, kp // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=score.device).scatter_(-1, keep, True)
    return mask.reshape(n, kp)[:, :k]


def wanda_24(w: Tensor, sqnorm: Tensor) -> Tensor:
    """2:4-prune (N, K) `w` by |W| * ||X_j||_2; sqnorm (K,) is sum over rows of x_j^2. Same dtype as w."""
    score = w.abs().float() * sqnorm.float().clamp(min=0).sqrt()[None, :]
    return w * keep_24(score)


__all__ = ["keep_24", "wanda_24"]
