"""Run a model on calibration data and collect, per nn.Linear, what the methods need.

Calibration data is an iterable of model inputs: a tensor (model(x)), a tuple or list
of positional arguments (model(*args)), or a dict of keyword arguments (model(**kw),
e.g. a tokenizer's output). Tensors are moved to the model's device.

For each watched Linear, forward pre-hooks accumulate over every calibration row x
(the layer's input flattened to (rows, K)):
  hessian  H = sum x^T x                (K, K) float32: GPTQ, SparseGPT, AWQ's losses
  sqnorm   sum x_j^2 per input channel  (K,):  Wanda's ||X_j||_2^2
  absmean  mean |x_j| per input channel (K,):  AWQ's activation scale
  shift    sum x^T (x_float - x)        (K, K): GPTQ's float targets, x_float the same row's input
                                                in the float model (sequential.py pairs them)
The reconstruction error of a replacement weight Q on that data is then
||(W - Q) X^T||^2 = tr((W - Q) H (W - Q)^T) (output_error), no activations kept.

sequential.py runs the methods block by block on these statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency of the compress layer
    tqdm = None


class _Stop(Exception):
    """Raised by a hook once every layer of the block has seen this input."""


@dataclass
class Stats:
    in_features: int
    hessian: Tensor | None = None
    sqnorm: Tensor | None = None
    abssum: Tensor | None = None
    shift: Tensor | None = None
    rows: int = 0

    @property
    def absmean(self) -> Tensor:
        return self.abssum / max(self.rows, 1)

    def add(self, x: Tensor, want: tuple[str, ...], x_float: Tensor | None = None) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if "shift" in want and x_float is not None:
            d = x_float.detach().reshape(x.shape).float() - x
            self.shift = x.T @ d if self.shift is None else self.shift.add_(x.T @ d)
        if "hessian" in want:
            h = x.T @ x
            self.hessian = h if self.hessian is None else self.hessian.add_(h)
        if "sqnorm" in want:
            s = x.square().sum(0)
            self.sqnorm = s if self.sqnorm is None else self.sqnorm.add_(s)
        if "absmean" in want:
            a = x.abs().sum(0)
            self.abssum = a if self.abssum is None else self.abssum.add_(a)
        self.rows += x.shape[0]


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_device(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict) or hasattr(obj, "keys"):  # dicts and mappings such as a tokenizer's BatchEncoding
        return {k: to_device(obj[k], device) for k in obj.keys()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def call(model: nn.Module, batch):
    """model(batch) by the calibration convention: tensor, tuple/list of args, or dict of kwargs."""
    if torch.is_tensor(batch):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return model(**batch)
    raise TypeError(f"kernelswap calibration: a batch must be a tensor, a tuple/list of positional arguments or "
                    f"a dict of keyword arguments, got {type(batch).__name__}")


def batches(data: Iterable, where: str) -> list:
    """The calibration data as a list (it is run several times), checked non-empty."""
    if data is None:
        raise ValueError(f"{where}: needs calibration data: pass calibration=[batch, ...] (tensors, tuples of "
                         f"positional arguments, or dicts of keyword arguments such as a tokenizer's output)")
    if torch.is_tensor(data) or isinstance(data, dict):
        raise TypeError(f"{where}: calibration= is an iterable of batches; wrap a single batch in a list: "
                        f"calibration=[batch]")
    out = list(data)
    if not out:
        raise ValueError(f"{where}: calibration data is empty; pass at least one batch")
    return out


def progress(iterable, desc: str, total: int | None = None, enable: bool = True):
    if tqdm is None or not enable:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def collect(model: nn.Module, layers: dict[str, nn.Linear], data: list, want: tuple[str, ...],
            desc: str = "calibrating", stop_early: bool = True, show: bool = True,
            run: Callable | None = None, floats: dict[str, Tensor] | None = None) -> dict[str, Stats]:
    """Run the model on every batch with hooks on `layers`; {name: Stats}.

    With stop_early the forward of a batch is cut off once every watched layer has run.
    run(batch) replaces model(batch) (sequential.py runs one block on its captured inputs); floats, filled
    by run, has each watched layer's input in the float model for the "shift" statistic."""
    stats = {n: Stats(m.in_features) for n, m in layers.items()}
    seen: set[str] = set()
    device = model_device(model)

    def hook_for(name):
        def hook(mod, args):
            x = args[0]
            stats[name].add(x, want, None if floats is None else floats.get(name))
            seen.add(name)
            if stop_early and len(seen) == len(stats):
                raise _Stop
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for batch in progress(data, desc, len(data), show):
                seen.clear()
                try:
                    run(batch) if run is not None else call(model, to_device(batch, device))
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, s in stats.items() if s.rows == 0]
    if missing:
        raise ValueError(f"kernelswap calibration: layer(s) {missing[:5]} never ran on the calibration data; "
                         f"exclude them with filter= or give inputs that reach them")
    return stats


def output_error(w: Tensor, q: Tensor, hessian: Tensor) -> float:
    """||(W - Q) X^T||^2 / ||W X^T||^2 on the calibration rows behind `hessian` (= X^T X)."""
    d = (w.float() - q.float())
    err = (d @ hessian * d).sum()
    ref = (w.float() @ hessian * w.float()).sum()
    return float(err / ref.clamp(min=1e-30))


__all__ = ["Stats", "batches", "call", "collect", "model_device", "output_error", "progress", "to_device"]
