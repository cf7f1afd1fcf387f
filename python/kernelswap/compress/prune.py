"""ks.prune(model, method, calibration, filter): make Linear weights 2:4 in place, still float.

The pruned model is an ordinary float model (trainable: ks.distill), and a later
ks.swap(model, "sparse24") keeps exactly its mask (packing.prune_24 leaves a weight that
is already 2:4 unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .driver import CALIBRATED, PRUNE_METHODS, pruned_weights


@dataclass
class PrunedLayer:
    name: str
    shape: tuple[int, int]
    nonzero: float  # fraction of weights left non-zero
    output_error: float | None  # ||(W - P) X^T||^2 / ||W X^T||^2 on the calibration data


class PruneReport:
    def __init__(self, method: str, layers: list[PrunedLayer], seconds: float):
        self.method, self.layers, self.seconds = method, layers, seconds

    def to_dict(self) -> dict:
        return {"method": self.method, "seconds": self.seconds, "layers": [vars(x) for x in self.layers]}

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"PruneReport(method={self.method!r}, layers={len(self.layers)}, seconds={self.seconds:.1f})"

    def __str__(self) -> str:
        lines = [f"kernelswap.prune {self.method}: {len(self.layers)} Linear layers made 2:4 "
                 f"in {self.seconds:.1f} s", f"{'layer':<48} {'shape':<14} {'non-zero':>8}  output error"]
        for x in self.layers:
            err = "" if x.output_error is None else f"{x.output_error:.4f}"
            lines.append(f"{x.name:<48} {str(x.shape):<14} {x.nonzero:>8.3f}  {err}")
        return "\n".join(lines)


def prune(model: nn.Module, method: str = "wanda", calibration: Iterable | None = None,
          filter: Callable[[str, nn.Module], bool] | None = None, *, progress: bool = True) -> PruneReport:
    """Make every nn.Linear the filter admits 2:4 sparse in place (float weights); returns a PruneReport.

    method       "magnitude" (no data), "wanda" or "sparsegpt" (need calibration=).
    calibration  an iterable of model inputs (tensor, tuple of positional args, or dict of kwargs).
    filter       filter(name, module) -> bool, as for ks.swap.
    Calibration runs on the model's device with the model in eval mode (its modes are restored).
    """
    import time

    from ..swap import _linear_reason, _linears

    if method not in PRUNE_METHODS:
        raise ValueError(f"kernelswap.prune: method must be one of {PRUNE_METHODS}, got {method!r}")
    if method in CALIBRATED and calibration is None:
        raise ValueError(f"kernelswap.prune: method {method!r} needs calibration data: pass "
                         f"calibration=[batch, ...] (or use method='magnitude', which needs none)")
    layers = [(n, m) for n, m, _ in _linears(model)
              if _linear_reason(model, n, m) is None and (filter is None or filter(n, m))]
    if not layers:
        raise ValueError("kernelswap.prune: no nn.Linear layer to prune (check filter=)")
    modes = {m: m.training for m in model.modules()}
    t0 = time.perf_counter()
    try:
        model.eval()
        pruned, errors = pruned_weights(model, layers, calibration, method, keep=True, show=progress)
    finally:
        for m, mode in modes.items():
            m.training = mode
    out = [PrunedLayer(n, tuple(m.weight.shape), float((pruned[n] != 0).float().mean()), errors.get(n))
           for n, m in layers]
    return PruneReport(method, out, time.perf_counter() - t0)


__all__ = ["PruneReport", "PrunedLayer", "prune"]
