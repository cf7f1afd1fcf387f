"""AWQ: activation-aware weight quantization (per-channel scaling + clipping search).

Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration", MLSys 2024 (arXiv:2306.00978).

1. Scale search. The input channels that see large activations matter most. For the
   Linears that read the same input X, AWQ multiplies their weight columns by
   s = mean|X|^alpha (normalised by sqrt(max * min)) and divides the producer of X by s
   (a norm's weight and bias, or the rows of a preceding Linear), which leaves the float
   model unchanged; alpha is picked on a grid of 20 in [0, 1) by the output error of the
   quantized layers, ||(Q(W diag(s)) diag(s)^-1 - W) X^T||^2 = tr(D H D^T) with H = X^T X.
   The fold is only applied where it is exact: each producer/consumer pattern (layer
   names with the block numbers removed) is checked once by running the model with the
   fold on one calibration batch (output unchanged to 1e-3 relative), and the whole model
   once more at the end; where no exact fold exists (e.g. a post-LayerNorm feeding a
   residual) the layer keeps s = 1.
2. Clip search. Per group, the quantization range is shrunk by a ratio in
   {1, 0.975, ..., 0.525} (both ends of the range), keeping the ratio with the lowest
   output error of that group, tr(D_g H_gg D_g^T), H_gg the group's block of H.
The weights are then quantized with kernelswap.packing.quantize_int4 (clipped weights in,
so the format is exactly that one).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..packing import Int4Weight, dequantize_int4, quantize_int4
from .calibration import Stats, call, model_device, to_device

SCALE_GRID = 20
CLIP_GRID, MAX_SHRINK = 20, 0.5
FOLD_RTOL = 1e-3


def _quant_error(d: Tensor, hessian: Tensor) -> Tensor:
    return (d @ hessian * d).sum()


def search_scale(w: Tensor, hessian: Tensor, absmean: Tensor, group_size: int, symmetric: bool) -> Tensor:
    """Best per-input-channel scale s (K,) for weight rows `w` (all Linears reading the input)."""
    w = w.float()
    x = absmean.float().clamp(min=1e-4)
    best, best_s = None, torch.ones_like(x)
    for i in range(SCALE_GRID):
        s = x.pow(i / SCALE_GRID).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        q = dequantize_int4(quantize_int4(w * s, group_size, symmetric)) / s
        loss = float(_quant_error(q - w, hessian))
        if best is None or loss < best:
            best, best_s = loss, s
    return best_s


def clamp_groups(w: Tensor, ratio: Tensor, group_size: int, symmetric: bool) -> Tensor:
    """Shrink every group's range by ratio (N, G): values outside are clamped."""
    n, k = w.shape
    kp = -(-k // group_size) * group_size
    g = F.pad(w, (0, kp - k)).reshape(n, kp // group_size, group_size)
    r = ratio[..., None]
    if symmetric:
        hi = g.abs().amax(-1, keepdim=True) * r
        lo = -hi
    else:
        lo, hi = g.amin(-1, keepdim=True).clamp(max=0) * r, g.amax(-1, keepdim=True).clamp(min=0) * r
    return torch.maximum(torch.minimum(g, hi), lo).reshape(n, kp)[:, :k]


def search_clip(w: Tensor, hessian: Tensor, group_size: int, symmetric: bool) -> Tensor:
    """Best range ratio per (row, group), (N, G)."""
    w = w.float()
    n, k = w.shape
    kp = -(-k // group_size) * group_size
    groups = kp // group_size
    h = F.pad(hessian.float(), (0, kp - k, 0, kp - k))
    hb = torch.stack([h[j * group_size:(j + 1) * group_size, j * group_size:(j + 1) * group_size]
                      for j in range(groups)])  # (G, gs, gs)
    best = torch.full((n, groups), float("inf"), device=w.device)
    best_r = torch.ones(n, groups, device=w.device)
    for i in range(int(MAX_SHRINK * CLIP_GRID)):
        r = torch.full((n, groups), 1 - i / CLIP_GRID, device=w.device)
        q = dequantize_int4(quantize_int4(clamp_groups(w, r, group_size, symmetric), group_size, symmetric))
        d = F.pad(q - w, (0, kp - k)).reshape(n, groups, group_size)
        loss = torch.einsum("ngi,gij,ngj->ng", d, hb, d)
        better = loss < best
        best, best_r = torch.where(better, loss, best), torch.where(better, r, best_r)
    return best_r


def awq_int4(w: Tensor, hessian: Tensor, group_size: int, symmetric: bool) -> Int4Weight:
    """Clip-searched int4 of an (already scaled) weight; hessian of its (already scaled) input."""
    ratio = search_clip(w, hessian, group_size, symmetric)
    return quantize_int4(clamp_groups(w.float(), ratio, group_size, symmetric), group_size, symmetric)


# ---------------------------------------------------------------- folding the scales into the producer
def _scalable(m: nn.Module, k: int) -> bool:
    if isinstance(m, nn.Linear):
        return m.out_features == k
    w = getattr(m, "weight", None)
    return isinstance(w, Tensor) and w.dim() == 1 and w.numel() == k and not list(m.children())


def _scale_producer(m: nn.Module, s: Tensor) -> None:
    """Divide the module's output channels by s."""
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            m.weight.div_(s[:, None].to(m.weight.dtype))
        else:
            m.weight.div_(s.to(m.weight.dtype))
        b = getattr(m, "bias", None)
        if isinstance(b, Tensor):
            b.div_(s.to(b.dtype))


def _tensors(out) -> list[Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict) or hasattr(out, "keys"):
        return [t for k in out.keys() for t in _tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def _same_output(model: nn.Module, batch, ref: list[Tensor]) -> bool:
    with torch.no_grad():
        out = _tensors(call(model, batch))
    return len(out) == len(ref) and all(
        o.shape == r.shape and float((o.float() - r.float()).norm()) <= FOLD_RTOL * float(r.float().norm()) + 1e-12
        for o, r in zip(out, ref) if r.is_floating_point())


def find_producers(model: nn.Module, consumers: dict[str, nn.Linear], batch) -> list[tuple[str | None, list[str]]]:
    """[(producer name or None, [consumer names reading the same input])], from one forward on `batch`.

    The producer is the module whose output is the very tensor the consumers read, else the
    last Linear that ran before them with as many outputs as they have inputs."""
    outputs: dict[int, str] = {}
    order: list[str] = []
    keep = []
    names = {id(m): n for n, m in model.named_modules()}

    def hook(mod, args, out):
        if torch.is_tensor(out):
            outputs.setdefault(id(out), names[id(mod)])
            keep.append(out)
        if isinstance(mod, nn.Linear):
            order.append(names[id(mod)])

    first_inputs: dict[str, int] = {}

    def pre(name):
        def f(mod, args):
            first_inputs.setdefault(name, id(args[0]))
            keep.append(args[0])
        return f

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    handles += [consumers[n].register_forward_pre_hook(pre(n)) for n in consumers]
    try:
        with torch.no_grad():
            call(model, batch)
    finally:
        for h in handles:
            h.remove()
    groups: dict[int, list[str]] = {}
    for n in consumers:
        groups.setdefault(first_inputs[n], []).append(n)
    modules = dict(model.named_modules())
    result = []
    for key, members in groups.items():
        k = consumers[members[0]].in_features
        producer = outputs.get(key)
        if producer is None or not _scalable(modules[producer], k):
            first = min(order.index(n) for n in members)
            before = [n for n in order[:first] if _scalable(modules[n], k)]
            producer = before[-1] if before else None
        result.append((producer, members))
    return result


def _pattern(producer: str, members: list[str]) -> str:
    return re.sub(r"\.\d+\.", ".#.", producer + "->" + ",".join(members))


def awq_model(model: nn.Module, consumers: dict[str, nn.Linear], stats: dict[str, Stats], batch,
              group_size: int, symmetric: bool) -> dict[str, Tensor]:
    """Search and fold the scales in place (float model stays equivalent); {consumer: s} of the folds made."""
    batch = to_device(batch, model_device(model))
    modules = dict(model.named_modules())
    with torch.no_grad():
        ref = [t.clone() for t in _tensors(call(model, batch))]
    checked: dict[str, bool] = {}
    folded: dict[str, Tensor] = {}
    done = []
    for producer, members in find_producers(model, consumers, batch):
        pat = _pattern(producer, members) if producer is not None else None
        if producer is None or checked.get(pat) is False:  # no producer, or one that cannot take the fold
            continue
        st = stats[members[0]]
        w = torch.cat([consumers[n].weight.detach().float() for n in members])
        s = search_scale(w, st.hessian, st.absmean, group_size, symmetric)
        fold = (modules[producer], [consumers[n] for n in members], s)
        _apply(fold, forward=True)
        if pat not in checked:
            checked[pat] = _same_output(model, batch, ref)
        if not checked[pat]:
            _apply(fold, forward=False)
            continue
        done.append(fold)
        for n in members:
            folded[n] = s
    if done and not _same_output(model, batch, ref):  # a pattern that held once but not everywhere
        for fold in reversed(done):
            _apply(fold, forward=False)
        folded = {}
    return folded


def _apply(fold, forward: bool) -> None:
    producer, members, s = fold
    s = s if forward else 1 / s
    _scale_producer(producer, s)
    with torch.no_grad():
        for m in members:
            m.weight.mul_(s[None, :].to(m.weight.dtype))


__all__ = ["awq_int4", "awq_model", "clamp_groups", "find_producers", "search_clip", "search_scale"]
