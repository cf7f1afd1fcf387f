"""The per-layer table: each swapped layer's backend and share of the forward's time.

Timing: a forward pre-hook and hook on every swapped layer (CUDA events on the GPU,
perf_counter on the CPU), over a few forwards that are not the latency measurement
(hooks cost host time). The backend: one more forward during which every backend choice
is recorded. Choices are memoized per argument layout (the dispatcher's memo and each
layer's runners), so both are dropped first and every layer makes its own choice.
"""
from __future__ import annotations

import contextlib
import sys
import time

import torch
from torch import nn

from ..nn import KernelswapModule
from ..ops import backend
from ._measure import Batch, run


@contextlib.contextmanager
def _recording_choices(current: list):
    """Append (op, backend) of every choice the dispatcher makes to current[-1].

    The choice is kernelswap.ops.backend._choose; the modules that call it (the dispatcher's
    Plan, the layers' per-layout runners) may hold it under its own name, so every
    kernelswap.ops module's binding of it is replaced for the duration."""
    choose = getattr(backend, "_choose", None)
    holders = [m for name, m in list(sys.modules.items())
               if name.startswith("kernelswap.ops") and getattr(m, "_choose", None) is choose]
    if choose is None or not holders:  # the dispatcher changed shape: say so rather than guess
        yield False
        return

    def spy(op, device, args):
        impl, lasting = choose(op, device, args)
        if current:
            current[-1].append((op, impl.backend))
        return impl, lasting

    for m in holders:
        m._choose = spy
    try:
        yield True
    finally:
        for m in holders:
            m._choose = choose
        backend.clear_plans()


def _forget_choices(model: nn.Module) -> None:
    """Make every layer choose its backend again on its next call (memo and runners dropped)."""
    backend.clear_plans()
    for m in model.modules():
        if isinstance(m, KernelswapModule) and callable(getattr(m, "prepare", None)):
            m.prepare()  # also forgets the layer's per-layout runners


def served_by(model: nn.Module, names: list[str], batch: Batch) -> dict[str, list[tuple[str, str]]]:
    """{layer name: [(op, backend), ...] in call order} over one forward."""
    got: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
    current: list = []
    handles = []
    for n in names:
        m = model.get_submodule(n)

        def pre(mod, args, n=n):
            backend.clear_plans()  # layers of one shape share the memo: each must choose itself
            current.append(got[n])

        def post(mod, args, out):
            if current:
                current.pop()

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with _recording_choices(current) as ok:
            _forget_choices(model)
            run(model, batch)
        if not ok:
            return {n: [("?", "unknown (kernelswap.ops.backend has no _choose to record)")] for n in names}
    finally:
        for h in handles:
            h.remove()
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
