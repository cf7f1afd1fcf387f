"""Launching a Triton kernel again without Triton's per-call Python.

`kernel[grid](*args, **consts)` walks Triton's wrappers on every call: the autotuner builds
its key and argument dicts, `triton.heuristics` recomputes its values, and the JIT binds
and specializes every argument, hashes a cache key and fetches device and stream. On the
H100 machine's host a W8A16 decode call (4096x4096, two launches) took 179 us of host time
against 31 us for the nn.Linear it replaces (benchmarks/overhead_quick.py), most of it in
that path (its --profile listing): more than the kernels run.

`launch(kernel, grid, args, consts)` does that once per argument layout and then calls
the compiled kernel directly (KERNELSWAP_FAST_LAUNCH=0, read at import, turns this off:
every launch then takes Triton's own path). The layout key holds what Triton specializes and tunes on:
every int and float argument's exact value (shapes, strides: the autotune keys, the
`== 1` and `% 16` specializations, int32 vs int64), each tensor's dtype and 16-byte
alignment, the constexpr values and the current device. A new layout takes the full
path, and so does anything this module cannot replay exactly: a config with a pre-hook
(TMA block shapes), a wrapper it does not know, Triton's interpreter (TRITON_INTERPRET=1,
which returns no compiled kernel), or a Triton whose compiled kernels lack `run`.

While kernelswap.ops._replay records a call (RECORDER is set), each fast-path launch is told to
it with its compiled kernel, grid and fixed arguments, and any full-path launch refuses the
recording (it cannot be replayed as it is).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import triton

from ._tuning import interpreting

ENABLED = os.environ.get("KERNELSWAP_FAST_LAUNCH", "1") != "0"
# The recording in progress (kernelswap.ops._replay), told of each launch; None when not recording.
RECORDER = None
_CACHE: dict[tuple, tuple | object] = {}
LIMIT = 4096  # layouts kept (token counts vary); cleared when full
_NOT_REPLAYABLE = object()  # cached "take the full path for this layout"
_PLAIN = (int, float, bool, str, type(None))


def _layout(device: int, args: tuple, consts: dict) -> tuple | None:
    """The key of this call's layout, or None when an argument is neither a tensor nor a
    plain value (e.g. a TMA descriptor, built per call): such calls always take the full path."""
    key = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        elif isinstance(a, _PLAIN):
            key.append((type(a), a))  # exact: True and 1 differ
        else:
            return None
    return (device, *key, *sorted(consts.items()))


def _chain(fn) -> tuple[list, Any]:
    """(the wrappers around the kernel, outermost first; the JIT function, or None when the
    kernel is something else, e.g. the interpreter's)."""
    wrappers = []
    while isinstance(fn, (triton.runtime.Autotuner, triton.runtime.Heuristics)):
        wrappers.append(fn)
        fn = fn.fn
    return wrappers, (fn if isinstance(fn, triton.runtime.JITFunction) else None)


def _tuned(fn) -> dict:
    """The meta-parameters the autotuner(s) around `fn` chose on the call just made."""
    wrappers, _ = _chain(fn)
    chosen = {}
    for w in wrappers:
        if isinstance(w, triton.runtime.Autotuner):
            chosen.update(w.best_config.kwargs)
    return chosen


def _replay(fn, args: tuple, consts: dict, grid: Callable | tuple, compiled) -> tuple | object:
    """What the fast path needs to launch `compiled` again with these arguments: (compiled,
    grid tuple, the full argument list in signature order, the tuned meta-parameters), or
    _NOT_REPLAYABLE."""
    wrappers, jit = _chain(fn)
    if jit is None or not (hasattr(compiled, "run") and hasattr(compiled, "function")
                           and hasattr(compiled, "packed_metadata")):
        return _NOT_REPLAYABLE
    named = {**dict(zip(jit.arg_names, args)), **consts}
    chosen = {}
    for w in wrappers:  # outermost first, as Triton applies them
        if isinstance(w, triton.runtime.Autotuner):
            if w.best_config.pre_hook is not None:
                return _NOT_REPLAYABLE
            chosen.update(w.best_config.kwargs)
            named.update(w.best_config.kwargs)
        else:
            for name, heuristic in w.values.items():
                named[name] = heuristic(dict(named))
    values = []
    for param in jit.params:
        if param.name in named:
            values.append(named[param.name])
        elif param.has_default:
            values.append(param.default)
        else:
            return _NOT_REPLAYABLE
    g = grid(named) if callable(grid) else grid
    g = tuple(g) + (1,) * (3 - len(g))
    fixed = values[len(args):]
    if any(isinstance(v, torch.Tensor) for v in fixed):
        return _NOT_REPLAYABLE
    # The positional arguments are the call's own (each replay passes its own): the template
    # keeps no tensor of this first call alive. Keeping them made the tensors of a call made
    # during a torch.compile cudagraph warm-up outlive it ("tensors in the cudagraph pool not
    # tracked as outputs").
    return compiled, g, (None,) * len(args) + tuple(fixed), chosen


def _full(fn, grid, args: tuple, consts: dict, why: str) -> dict:
    """Triton's own path, which a recording cannot replay."""
    if RECORDER is not None:
        RECORDER.refuse(why)
    fn[grid](*args, **consts)
    return _tuned(fn)


def launch(fn, grid: Callable | tuple, args: tuple, consts: dict) -> dict:
    """fn[grid](*args, **consts), through the fast path once this layout has been seen.
    Returns the meta-parameters the autotuner chose for this layout (empty without one)."""
    if not ENABLED or interpreting():  # the interpreter runs on CPU tensors and compiles nothing
        return _full(fn, grid, args, consts, "Triton's fast launch is off (or the interpreter runs)")
    device = torch.cuda.current_device()
    layout = _layout(device, args, consts)
    if layout is None:
        return _full(fn, grid, args, consts, "a launch argument is neither a tensor nor a plain value")
    key = (id(fn), layout)
    hit = _CACHE.get(key)
    if hit is None:
        if RECORDER is not None:
            RECORDER.refuse("the first launch of a layout (compiled or tuned now)")
        compiled = fn[grid](*args, **consts)
        if len(_CACHE) >= LIMIT:
            _CACHE.clear()
        hit = _CACHE[key] = _replay(fn, args, consts, grid, compiled)
        return _tuned(fn) if hit is _NOT_REPLAYABLE else hit[3]
    if hit is _NOT_REPLAYABLE:
        return _full(fn, grid, args, consts, "a launch the fast path cannot replay")
    compiled, g, template, chosen = hit
    fixed = template[len(args):]  # this call's arguments first; the rest is fixed for the layout
    if RECORDER is not None:
        RECORDER.launch(compiled, g, args, fixed, device)
    run_compiled(compiled, g, args + fixed, device)
    return chosen


_RUNTIME = getattr(getattr(triton, "knobs", None), "runtime", None)


def _hook(name: str):
    """Triton's launch hook `name`, or None when none is set (Triton 3.4+ keeps a HookChain that is
    empty unless a profiler added to it: then the launch metadata need not be computed)."""
    hook = getattr(_RUNTIME, name, None)
    calls = getattr(hook, "calls", None)
    return None if hook is None or (isinstance(calls, list) and not calls) else hook


def run_compiled(compiled, g: tuple, values: tuple, device: int) -> None:
    """Launch a compiled kernel on the current stream of `device` (Triton's launch hooks honoured)."""
    stream = torch._C._cuda_getCurrentRawStream(device)
    enter, exit_ = _hook("launch_enter_hook"), _hook("launch_exit_hook")
    meta = compiled.launch_metadata(g, stream, *values) if enter is not None else None
    compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata, meta, enter, exit_,
                 *values)


def clear() -> None:
    """Forget every replayable launch (tests)."""
    _CACHE.clear()
