"""Block-by-block calibration for GPTQ, SparseGPT and Wanda, as in the papers' code.

Blocks are the Linears grouped by the first numbered module in their name (a ModuleList
entry such as model.layers.3). Each block is calibrated on the outputs of the earlier
blocks as already compressed, and inside a block each set of Linears that reads one input
(q/k/v, then o, then gate/up, then down) on the outputs of the sets before it as already
compressed: GPTQ's "true sequential" order.

A block's inputs (its positional and keyword arguments, per calibration batch) are captured
with a pre-hook, cutting the model's forward off there; the block alone is then run on them,
once per set of Linears (stopping as soon as the set has run) and once more to make the next
block's inputs. That hand-over is used between consecutive entries of one ModuleList after a
check, at its first step, that it gives exactly what the model itself passes to the next block
(hidden state, other arguments, keyword arguments; first batch); where the check fails, and
between blocks of different lists, the next block's inputs are captured afresh from the model
(earlier blocks compressed). A cache handed to the blocks (cache=, past_key_values=, ...) is
dropped and use_cache set False, so that running a block again does not grow it.

With float_targets, a float copy of each block runs beside it on the float model's hidden states
(handed over the same way), and each Linear's statistics pair its input with the float model's
input of the same row ("shift", for GPTQ's float targets: see gptq.py). The first block's inputs
are the float model's; after a recapture there are no float inputs and "shift" is left out.
"""
from __future__ import annotations

import copy
import re
from typing import Callable

import torch
from torch import Tensor, nn

from .calibration import Stats, _Stop, call, collect, model_device, progress, to_device

_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")
_CACHE_KEYS = ("cache", "past_key_value", "past_key_values", "layer_past")
HANDOVER_RTOL = 1e-4


def block_groups(layers: list[tuple[str, nn.Linear]]) -> list[tuple[str, list[tuple[str, nn.Linear]]]]:
    """[(block name, its Linears)], blocks in order of first appearance."""
    groups: dict[str, list] = {}
    for name, m in layers:
        match = _BLOCK.match(name)
        groups.setdefault(match.group(1) if match else name, []).append((name, m))
    return list(groups.items())


def blocks(layers: list[tuple[str, nn.Linear]]) -> list[list[tuple[str, nn.Linear]]]:
    """Linears grouped by the first numbered module in their name (a ModuleList entry), in order."""
    return [g for _, g in block_groups(layers)]


def _no_cache(kwargs: dict) -> dict:
    kw = {k: (None if k in _CACHE_KEYS else v) for k, v in kwargs.items()}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return kw


def capture(model: nn.Module, name: str, block: nn.Module, data: list) -> list[tuple[tuple, dict]]:
    """[(args, kwargs)] the model passes to `block`, one per calibration batch."""
    inputs = []

    def pre(mod, args, kwargs):
        inputs.append((args, _no_cache(kwargs)))
        raise _Stop

    device = model_device(model)
    handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in data:
                try:
                    call(model, to_device(batch, device))
                except _Stop:
                    pass
    finally:
        handle.remove()
    if len(inputs) != len(data):
        raise ValueError(f"kernelswap calibration: {name} ran on {len(inputs)} of {len(data)} calibration batches; "
                         f"exclude its layers with filter= or give inputs that reach it")
    return inputs


def _run(block: nn.Module) -> Callable:
    return lambda inp: block(*inp[0], **inp[1])


def reading_sets(block: nn.Module, group: list[tuple[str, nn.Linear]], inp) -> list[list[tuple[str, nn.Linear]]]:
    """The block's Linears in sets that read the same input tensor, in the order the sets first run (one batch);
    Linears that did not run come last (collect() then names them)."""
    first: dict[str, tuple[int, int]] = {}
    keep = []

    def pre_for(name):
        def pre(mod, args):
            if name not in first:
                first[name] = (len(first), id(args[0]))
                keep.append(args[0])  # holds the tensor so its id is not reused
        return pre

    handles = [m.register_forward_pre_hook(pre_for(n)) for n, m in group]
    try:
        with torch.no_grad():
            _run(block)(inp)
    finally:
        for h in handles:
            h.remove()
    sets: dict[object, list] = {}
    for name, m in sorted(group, key=lambda nm: first.get(nm[0], (len(group), 0))[0]):
        sets.setdefault(first[name][1] if name in first else "not run", []).append((name, m))
    return list(sets.values())


def _paired_run(block: nn.Module, fblock: nn.Module, rel: dict[str, str], floats: dict):
    """run((inputs, float inputs)): the float copy first, recording the inputs of the Linears `rel`
    ({name: name inside the block}) in floats and stopping once they have all run, then the block."""
    def pre_for(name):
        def pre(mod, args):
            floats[name] = args[0]
            if len(floats) == len(rel):
                raise _Stop
        return pre

    handles = [fblock.get_submodule(r).register_forward_pre_hook(pre_for(n)) for n, r in rel.items()]

    def run(pair):
        floats.clear()
        try:
            _run(fblock)(pair[1])
        except _Stop:
            pass
        _run(block)(pair[0])
    return run, handles


def _collect_set(block, fblock, name: str, members, inputs, finputs, want, desc):
    if fblock is None:
        return collect(block, dict(members), inputs, want, desc, show=False, run=_run(block))
    floats: dict = {}
    run, handles = _paired_run(block, fblock, {n: n[len(name) + 1:] for n, _ in members}, floats)
    try:
        return collect(block, dict(members), list(zip(inputs, finputs)), want, desc, show=False, run=run,
                       floats=floats)
    finally:
        for h in handles:
            h.remove()


def _same(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return torch.equal(a, b)
        return float((a.float() - b.float()).norm()) <= HANDOVER_RTOL * float(b.float().norm()) + 1e-12
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==: not provably the same
        return False


def _handover(block: nn.Module, inputs: list) -> list | None:
    """The next block's inputs from this block's outputs (its first output replaces the hidden state)."""
    out = []
    with torch.no_grad():
        for args, kwargs in inputs:
            y = _run(block)((args, kwargs))
            if isinstance(y, (tuple, list)) and y:
                y = y[0]
            if not torch.is_tensor(y) or not args:
                return None
            out.append(((y,) + tuple(args[1:]), kwargs))
    return out


def _follows(prev: str | None, name: str) -> bool:
    """name is the entry right after prev in the same ModuleList."""
    if prev is None:
        return False
    p, _, i = prev.rpartition(".")
    q, _, j = name.rpartition(".")
    return p == q and i.isdigit() and j.isdigit() and int(j) == int(i) + 1


def sequential(model: nn.Module, layers: list[tuple[str, nn.Linear]], data: list, want: tuple[str, ...],
               process: Callable[[str, nn.Linear, Stats], None], desc: str, show: bool = True,
               true_sequential: bool = True, float_targets: bool = False) -> None:
    """For each block, for each set of its Linears reading one input: collect the set's statistics (everything
    before it already processed), then process(name, linear, stats) each Linear of the set. With
    true_sequential=False a block's Linears are all calibrated on the block's input together (one set)."""
    groups = block_groups(layers)
    modules = dict(model.named_modules())
    checked: dict[str, bool] = {}  # ModuleList -> does the hand-over give what the model passes on
    inputs = finputs = None
    for i, (name, group) in enumerate(progress(groups, desc, len(groups), show)):
        block = modules[name]
        if inputs is None:
            inputs = capture(model, name, block, data)
            finputs = inputs if float_targets and i == 0 else None  # nothing compressed yet
        fblock = copy.deepcopy(block) if finputs is not None else None
        for members in reading_sets(block, group, inputs[0]) if true_sequential else [group]:
            stats = _collect_set(block, fblock, name, members, inputs, finputs, want, desc)
            for lname, linear in members:
                process(lname, linear, stats[lname])
                stats[lname].hessian = None  # free as we go
        nxt = groups[i + 1][0] if i + 1 < len(groups) else None
        parent = name.rpartition(".")[0]
        inputs = _handover(block, inputs) if nxt is not None and _follows(name, nxt) and \
            checked.get(parent) is not False else None
        finputs = _handover(fblock, finputs) if inputs is not None and fblock is not None else None
        if inputs is not None and parent not in checked:
            checked[parent] = _same(inputs[0], capture(model, nxt, modules[nxt], data[:1])[0])
            if not checked[parent]:
                inputs = finputs = None


__all__ = ["block_groups", "blocks", "capture", "reading_sets", "sequential"]
