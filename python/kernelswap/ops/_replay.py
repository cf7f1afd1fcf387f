"""Replaying a call: one eager call of an implementation recorded, then re-issued without its Python.

An implementation served by the "triton" or "torch" backend spends most of a decode call's host
time in Python between its launches: argument handling, split-K and tile choices, Triton's
launcher wrappers (a W8A16 call at M = 16, two Triton launches, cost 105 us of host time on the
H200 machine against 21 us for nn.Linear). For one input layout all of that decides the same
thing every time, so a per-layout runner (ops/_runner.py) wraps the implementation in a
`Replayer`: a call made under a `_Recorder` logs every aten op it issues (allocations, views,
casts, cuBLAS GEMMs: through a TorchDispatchMode) and every Triton launch (through the fast path
of kernelswap.kernels._launch, which already keeps each launch's compiled kernel, grid and fixed
arguments), with each tensor argument traced to where it came from: one of the call's inputs, a
tensor an earlier step made, or a tensor that existed before the call (weights, prepared
layouts). Later calls re-issue those steps on the new inputs, allocations included, so the
caching allocator and CUDA-graph capture see what the original call did.

A recording is refused, and the call stays a plain call, when it cannot be replayed: an op that
reads a value back to Python (`.item()`, a data-dependent branch), a random op, a Triton launch
that takes the full path (the first launch of a layout compiles or tunes: the next call
records again, up to RETRIES times), or a result that is not a tensor the call made or got.
KERNELSWAP_REPLAY=0 (read at import) turns replay off.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import _scratch

ENABLED = os.environ.get("KERNELSWAP_REPLAY", "1") != "0"
RETRIES = 3  # recordings tried before a runner stays plain

_aten = torch.ops.aten
_EMPTY = (_aten.empty.memory_format, _aten.empty_strided.default)
# Ops that hand a value back to Python, whose result the next steps may branch on.
_READS_BACK = {_aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default}


class _Slot:
    """Stands in a recorded argument for the tensor of slot `i` (an input, or an earlier step's result)."""
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def _sub(a: Any, vals: list) -> Any:
    if type(a) is _Slot:
        return vals[a.i]
    if type(a) in (list, tuple):
        return type(a)(_sub(v, vals) for v in a)
    if type(a) is dict:
        return {k: _sub(v, vals) for k, v in a.items()}
    return a


def _has_slot(a: Any) -> bool:
    if type(a) is _Slot:
        return True
    if type(a) in (list, tuple):
        return any(_has_slot(v) for v in a)
    if type(a) is dict:
        return any(_has_slot(v) for v in a.values())
    return False


def _builder(args: tuple) -> Callable[[list], tuple]:
    """vals -> args with each _Slot replaced, as cheap as the template allows (it runs per replay)."""
    if not _has_slot(args):
        return lambda vals: args
    top = [(i, a.i) for i, a in enumerate(args) if type(a) is _Slot]
    if len(top) == sum(_has_slot(a) for a in args):  # every slot at the top level
        base = list(args)

        def build(vals):
            out = base.copy()
            for pos, i in top:
                out[pos] = vals[i]
            return out
        return build
    return lambda vals: _sub(args, vals)


def _aliases(func) -> bool:
    """Whether func's result may alias an input (a view): then that input may escape with it."""
    return any(r.alias_info is not None for r in func._schema.returns)


def _slots_in(a: Any):
    if type(a) is _Slot:
        yield a
    elif type(a) in (list, tuple):
        for v in a:
            yield from _slots_in(v)
    elif type(a) is dict:
        for v in a.values():
            yield from _slots_in(v)


def _scratch_slots(steps: list, out: int, tensors: dict) -> dict[int, int]:
    """slot -> step index of each CUDA torch.empty (contents undefined) that is neither the result
    nor seen by a view, so it never escapes the call: a runner may keep it (Replayer._scratch)."""
    viewed = set()
    for func, args, kwargs, outs, single in steps:
        if func is not None and _aliases(func):
            viewed.update(s.i for s in _slots_in((args, kwargs)))
    found = {}
    for j, (func, args, kwargs, outs, single) in enumerate(steps):
        if func in _EMPTY and not _has_slot((args, kwargs)) and outs[0] != out and outs[0] not in viewed:
            t = tensors[outs[0]]
            if t.is_cuda and t.numel() * t.element_size() <= _scratch.LIMIT:
                found[outs[0]] = j
    return found


def _compile(steps: list, run_compiled: Callable | None, skip: set[int]) -> tuple:
    """The recorded steps as functions of the slot values (the steps in `skip` left out)."""
    fns = []
    for j, (func, args, kwargs, outs, single) in enumerate(steps):
        if j in skip:
            continue
        if func is None:
            compiled, grid, targs, fixed, device = args
            build = _builder(tuple(targs) + tuple(fixed))

            def launch(vals, compiled=compiled, grid=grid, build=build, device=device):
                run_compiled(compiled, grid, build(vals), device)
            fns.append(launch)
            continue
        if func is _aten.empty.memory_format and not _has_slot((args, kwargs)):
            def empty(vals, args=args, kwargs=kwargs, i=outs[0]):  # torch.empty: the quicker binding
                vals[i] = torch.empty(*args, **kwargs)
            fns.append(empty)
            continue
        build = _builder(args)
        kw = kwargs if not _has_slot(kwargs) else None

        def op(vals, func=func, build=build, kw=kw, kwargs=kwargs, outs=outs, single=single):
            r = func(*build(vals), **(kw if kw is not None else _sub(kwargs, vals)))
            if single:
                vals[outs[0]] = r
            else:
                for i, t in zip(outs, r):
                    vals[i] = t
        fns.append(op)
    return tuple(fns)


class _Recorder(TorchDispatchMode):
    def __init__(self, inputs: tuple):
        super().__init__()
        self.slots: dict[int, int] = {}
        self.tensors: dict[int, torch.Tensor] = {}  # slot -> the tensor it held in the recorded call
        self.keep: list = []  # every tensor seen, alive until the recording ends (ids stay unique)
        self.steps: list = []
        self.n = 0
        self.refused: str | None = None
        for t in inputs:
            self._new_slot(t)

    def _new_slot(self, t) -> int:
        i = self.n
        self.n += 1
        if isinstance(t, torch.Tensor):
            self.slots[id(t)] = i
            self.tensors[i] = t
            self.keep.append(t)
        return i

    def ref(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            i = self.slots.get(id(a))
            return a if i is None else _Slot(i)  # a tensor from before the call is kept as it is
        if type(a) in (list, tuple):
            return type(a)(self.ref(v) for v in a)
        if type(a) is dict:
            return {k: self.ref(v) for k, v in a.items()}
        return a

    def refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = why

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS_BACK or torch.Tag.nondeterministic_seeded in func.tags:
            self.refuse(f"{func} reads a value back or draws random numbers")
        ref_args, ref_kwargs = self.ref(tuple(args)), self.ref(kwargs)  # before an in-place result re-slots
        out = func(*args, **kwargs)
        if func is _aten.detach.default and type(ref_args[0]) is _Slot:
            # What a factory call under this mode adds (no autograd here): the same tensor for a replay.
            self.slots[id(out)] = ref_args[0].i
            self.keep.append(out)
            return out
        if isinstance(out, torch.Tensor):
            outs = (self._new_slot(out),)
        elif isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
            outs = tuple(self._new_slot(o) for o in out)
        else:
            self.refuse(f"{func} returns {type(out).__name__}")
            return out
        self.steps.append((func, ref_args, ref_kwargs, outs, isinstance(out, torch.Tensor)))
        return out

    def launch(self, compiled, grid: tuple, args: tuple, fixed: tuple, device: int) -> None:
        """A Triton launch through kernelswap.kernels._launch's fast path (its positional args, then the
        fixed rest)."""
        self.steps.append((None, (compiled, grid, self.ref(tuple(args)), fixed, device), None, (), False))


class Replayer:
    """fn(*inputs), recorded on a call and replayed on the later ones (module docstring)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.program: tuple | None = None
        # Per stream, the scratch tensors the replays reuse (the call's own empty() buffers that never
        # escape it): calls on one stream run in order, so they never overlap; another stream has its own.
        self._scratch = _scratch.PerStream()
        self.tries = RETRIES if ENABLED else 0
        self.why_plain: str | None = None if ENABLED else "off (KERNELSWAP_REPLAY=0)"

    def __call__(self, *inputs):
        if self.program is not None:
            return self._replay(inputs)
        if self.tries <= 0:
            return self.fn(*inputs)
        self.tries -= 1
        return self._record(inputs)

    def _record(self, inputs: tuple):
        launches = _launch_module()
        if launches is not None and launches.RECORDER is not None:  # inside another's recording
            return self.fn(*inputs)
        rec = _Recorder(inputs)
        if launches is not None:
            launches.RECORDER = rec
        try:
            with rec:
                out = self.fn(*inputs)
        finally:
            if launches is not None:
                launches.RECORDER = None
        i = rec.slots.get(id(out)) if isinstance(out, torch.Tensor) else None
        if i is None:
            rec.refuse("the result is not a tensor the call made or got")
        if rec.refused is None:
            scratch = _scratch_slots(rec.steps, i, rec.tensors)
            steps = _compile(rec.steps, launches.run_compiled if launches is not None else None, set(scratch.values()))
            fill = tuple((slot, rec.steps[j][0], rec.steps[j][1], rec.steps[j][2]) for slot, j in scratch.items())
            device = rec.tensors[next(iter(scratch))].device.index if scratch else None
            self.program = (steps, rec.n, i, fill, device)
        else:
            self.why_plain = rec.refused
        return out

    def _replay(self, inputs: tuple):
        vals = self.slot_values(inputs)
        for step in self.program[0]:
            step(vals)
        return vals[self.program[2]]

    def slot_values(self, inputs: tuple) -> list:
        """The slots a replay starts from: the inputs, this stream's scratch, None for the rest."""
        steps, n, out, fill, device = self.program
        vals = [*inputs, *([None] * (n - len(inputs)))]
        if fill:
            stream = torch._C._cuda_getCurrentRawStream(device)
            bufs = self._scratch.get(stream, 0, lambda: [func(*args, **kwargs) for _, func, args, kwargs in fill])
            for (slot, *_), buf in zip(fill, bufs):
                vals[slot] = buf
        return vals


def _launch_module():
    """kernelswap.kernels._launch, or None without Triton (then no call launches a Triton kernel)."""
    try:
        from kernelswap.kernels import _launch
    except ImportError:
        return None
    return _launch


def replayable(backend: str) -> bool:
    """Backends whose implementations are Python between launches (the ones a Replayer saves time on)."""
    return ENABLED and backend in ("triton", "torch")
