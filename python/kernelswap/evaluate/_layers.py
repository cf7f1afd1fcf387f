"""The per-layer table: each swapped layer's backend and share of the forward's time.

Timing: a forward pre-hook and hook on every swapped layer (CUDA events on the GPU,
perf_counter on the CPU), over a few forwards that are not the latency measurement
(hooks cost host time). The backend: one more forward during which every backend choice
is recorded: each layer's runners are dropped first, so every layer makes its own choice
and says which backend it took.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..nn import KernelswapModule
from ._measure import Batch, run


def served_by(model: nn.Module, names: list[str], batch: Batch) -> dict[str, list[tuple[str, str]]]:
    """{layer name: [(op, backend)]} over one forward. Each layer forgets its per-layout runners
    first (prepare()), so the forward makes it choose again, and it says which backend it chose
    (KernelswapModule.served_by)."""
    for m in model.modules():
        if isinstance(m, KernelswapModule):
            m.prepare()
    run(model, batch)
    got = {}
    for n in names:
        m = model.get_submodule(n)
        b = m.served_by()
        got[n] = [(m.OP, b)] if b else [("?", "unknown (the call went through the dispatcher)")]
    return got


def layer_times(model: nn.Module, names: list[str], batch: Batch, device: torch.device,
                repeats: int) -> tuple[dict[str, float], float]:
    """({layer: ms per forward}, ms of the whole forward), both timed with the hooks in place."""
    cuda = device.type == "cuda"
    spans: dict[str, list] = {n: [] for n in names}
    open_: dict[str, object] = {}

    def stamp():
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    handles = []
    for n in names:
        m = model.get_submodule(n)
        handles.append(m.register_forward_pre_hook(lambda mod, args, n=n: open_.__setitem__(n, stamp())))
        handles.append(m.register_forward_hook(lambda mod, args, out, n=n: spans[n].append((open_.pop(n), stamp()))))
    totals = []
    try:
        run(model, batch)  # warm-up
        for s in spans.values():
            s.clear()
        for _ in range(repeats):
            t0 = stamp()
            run(model, batch)
            totals.append((t0, stamp()))
    finally:
        for h in handles:
            h.remove()
    if cuda:
        torch.cuda.synchronize(device)

    def ms(a, b):
        return a.elapsed_time(b) if cuda else (b - a) * 1e3

    per = {n: sum(ms(a, b) for a, b in s) / repeats for n, s in spans.items()}
    return per, sum(ms(a, b) for a, b in totals) / repeats


def layer_table(model: nn.Module, report, batch: Batch, device: torch.device, repeats: int) -> dict:
    """Rows for the swapped layers (name, recipe, types, backend, ms, share) and the layers left."""
    modules = dict(model.named_modules())
    names = [x.name for x in report.swapped if isinstance(modules.get(x.name), KernelswapModule)]
    per, total = layer_times(model, names, batch, device, repeats)
    served = served_by(model, names, batch)
    rows = []
    for x in report.swapped:
        if x.name not in per:
            continue
        calls = served[x.name]
        rows.append({"name": x.name, "recipe": x.recipe, "before": x.before, "after": x.after,
                     "backend": calls[0][1] if calls else None,
                     "ops": [f"{op}:{b}" for op, b in dict.fromkeys(calls)],
                     "time_ms": per[x.name], "share": per[x.name] / total if total > 0 else None,
                     "sqnr_db": x.sqnr_db, "note": x.reason})
    left = [{"name": x.name, "recipe": x.recipe, "before": x.before, "reason": x.reason} for x in report.skipped]
    swapped_ms = sum(per.values())
    return {"forward_ms_with_hooks": total, "swapped_share": swapped_ms / total if total > 0 else None,
            "layers": rows, "left": left}
