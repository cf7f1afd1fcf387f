"""Per-call backend choice for kernelswap's ops.

Every public op has one implementation per backend:

  cuda       kernels compiled into the extension kernelswap._C
  triton     Triton kernels from kernelswap.kernels
  torch      fast compositions of torch ops on the GPU (dequantize + cuBLAS, cuDNN):
             taken where none of our kernels is faster, so a swap is never slower
  reference  plain torch (the CPU path, the fallback on every device, the test oracle)

Each op file registers its implementations here with a `supports(*args)` predicate
that returns None when the implementation can serve the call, or a reason string.
`choose` walks the implementations in the order of BACKENDS (then registration
order), skips backends that are unavailable on this machine or not serving this
device, and takes the first that supports the call. The reference backend supports everything. A
`Preference` reason ("another backend is faster here") declines only the automatic
choice: a forced backend still serves that call.

A user forces one backend with the environment variable KERNELSWAP_BACKEND (read at import;
`read_environment()` reads it again) or with `use_backend(name)`; a forced backend that cannot serve a call raises instead of
falling back, so numerics can be debugged one backend at a time.

Per call, checking the arguments and asking each backend took tens of microseconds of
host time, as much as a decode-size kernel runs. `Plan` memoizes both: the checks and
the `supports` predicates read only the arguments' layouts (shapes, strides, dtypes,
devices, 16-byte alignment) and scalar values, so a call whose layout `signature` has
been seen, under the same forced backend, skips them and goes straight to the
implementation chosen the first time. A `supports` that answers with a `Transient`
reason (one that may change on a later call, e.g. "not timed yet") keeps that call's
choice out of the memo. The swapped layers go one step further (ops/_runner.py): per input
layout they keep the chosen implementation bound to their weights (`Impl.bind`).

`Impl.prepare` makes an implementation's kernel-specific weight layouts; `prepare_weights`
calls every available one when a layer's buffers are made, moved or loaded.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

BACKENDS = ("cuda", "triton", "torch", "reference")

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("kernelswap_backend", default=None)


@dataclass(frozen=True)
class Impl:
    backend: str
    fn: Callable
    supports: Callable[..., str | None]
    # prepare(*weights): make the kernel-specific weight layouts this implementation reads
    # (PreparedWeights caches), called outside any forward (see prepare_weights).
    prepare: Callable[..., None] | None = None
    # bind(*args after x) -> fn(x): `fn` with everything but x looked up once (prepared
    # layouts, the C++ entry point); per-layout runners (ops/_runner.py) call it on each call.
    bind: Callable[..., Callable] | None = None
    # raw(x, *args after x) -> fn(x) or None: a runner for x's layout through _C's raw entry points
    # (ops/_raw.py), tried before `bind`; None when it cannot serve.
    raw: Callable[..., Callable | None] | None = None


_REGISTRY: dict[str, list[Impl]] = {}


def _always(*args, **kwargs) -> None:
    return None


def register(op: str, backend: str, supports: Callable[..., str | None] = _always,
             prepare: Callable[..., None] | None = None, bind: Callable[..., Callable] | None = None,
             first: bool = False, raw: Callable[..., Callable | None] | None = None):
    """Decorator: `fn` serves `op` on `backend` whenever `supports(*args)` is None.

    first=True puts `fn` before the implementations of the same backend registered earlier
    (e.g. cuSPARSELt ahead of the torch backend's dense fallback, which supports everything).

    `prepare(*weights)`, when given, makes the weight layouts `fn` reads from a cache
    (the op's arguments after x, e.g. (w_q, w_scale, bias)); `prepare_weights` calls it at
    swap time, on `.to(device)` and after a load, so no forward has to. `bind(*weights)`, when
    given, returns `fn` with the weights bound (ops/_runner.py); `raw(x, *weights)`, when given, a
    runner for x's layout that launches through _C's raw entry points (ops/_raw.py), or None."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")

    def deco(fn):
        impls = _REGISTRY.setdefault(op, [])
        impl = Impl(backend, fn, supports, prepare, bind, raw)
        impls.insert(0, impl) if first else impls.append(impl)
        impls.sort(key=lambda i: BACKENDS.index(i.backend))  # stable: cuda, triton, torch, reference
        _candidates.cache_clear()
        clear_plans()
        return fn

    return deco


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"KERNELSWAP_BACKEND / use_backend: unknown backend {name!r}; "
                         f"choose one of {', '.join(BACKENDS)}")
    return name


def forced_backend() -> str | None:
    """The backend forced by `use_backend` (innermost wins) or KERNELSWAP_BACKEND."""
    name = _forced.get()
    if name is None:
        if _ENV_ERROR:
            raise ValueError(_ENV_ERROR)
        return _ENV_FORCED
    return name


def read_environment() -> None:
    """Read KERNELSWAP_BACKEND and TRITON_INTERPRET again. Done once at import: per call,
    os.environ lookups were a measurable part of a decode layer's host time; a program that
    changes them later calls this (the tests do)."""
    global _ENV_FORCED, _ENV_ERROR, _INTERPRETING
    env = os.environ.get("KERNELSWAP_BACKEND", "").strip().lower()
    _ENV_FORCED, _ENV_ERROR = None, ""
    try:
        _ENV_FORCED = _check_name(env) if env and env != "auto" else None
    except ValueError as e:  # raised by the first op call, not by the import
        _ENV_ERROR = str(e)
    _INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
    clear_plans()


_ENV_FORCED: str | None = None
_ENV_ERROR = ""
_INTERPRETING = False


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force every kernelswap op in this block onto one backend.

    None or "auto" sets no override here (KERNELSWAP_BACKEND, if set, still applies)."""
    token = _forced.set(None if name in (None, "auto") else _check_name(name))
    try:
        yield
    finally:
        _forced.reset(token)


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1, as read at import (read_environment)."""
    return _INTERPRETING


def backend_status(backend: str) -> tuple[bool, str]:
    """(available on this machine, why not / what it is); looked up once per process
    (and per TRITON_INTERPRET setting), since it sits on every op call's path."""
    return _backend_status(backend, triton_interpreting())


@functools.lru_cache(maxsize=None)
def _backend_status(backend: str, interpreting: bool) -> tuple[bool, str]:
    if backend == "reference":
        return True, "plain torch"
    if backend == "torch":
        ok = torch.cuda.is_available()
        return ok, "torch ops on the GPU" if ok else "no CUDA device"
    if backend == "cuda":
        from .. import _ext
        return _ext.status()
    if backend == "triton":
        try:
            import triton
        except Exception as e:  # noqa: BLE001 - any import failure means unavailable
            return False, f"triton not importable: {e}"
        if interpreting:
            return True, f"triton {triton.__version__} (interpreter, TRITON_INTERPRET=1)"
        if not torch.cuda.is_available():
            return False, f"triton {triton.__version__} present, but no CUDA device"
        return True, f"triton {triton.__version__}"
    raise ValueError(f"unknown backend {backend!r}")


def _serves_device(backend: str, device_type: str, forced: str | None, interpreting: bool) -> bool:
    if backend == "reference":
        return True
    if device_type == "cuda":
        return _backend_status(backend, interpreting)[0]
    # Triton's interpreter runs kernels on CPU tensors, for the CPU tests; only when the
    # triton backend is forced, so interpreted kernels never serve ordinary CPU calls.
    return (backend == "triton" and device_type == "cpu" and interpreting and forced == "triton"
            and _backend_status("triton", interpreting)[0])


@functools.lru_cache(maxsize=None)
def _candidates(op: str, device_type: str, forced: str | None, interpreting: bool) -> tuple[Impl, ...]:
    """The implementations that may serve `op` here, in order (cached: this is per call)."""
    return tuple(i for i in _REGISTRY.get(op, ())
                 if (forced is None or i.backend == forced) and _serves_device(i.backend, device_type, forced,
                                                                                interpreting))


class Transient(str):
    """A `supports` reason that holds for this call only: the choice is not memoized."""


class Preference(str):
    """A `supports` reason that another backend is faster here, though this one could serve the
    call: it counts in the automatic choice and is ignored when this backend is forced, so a
    forced backend serves every shape it can (numerics can be tested anywhere)."""


def choose(op: str, device: torch.device, *args) -> Impl:
    """The implementation that serves `op` for these arguments (see module docstring)."""
    return _choose(op, device, args)[0]


def _choose(op: str, device: torch.device, args: tuple) -> tuple[Impl, bool]:
    """(the implementation, whether the choice may be memoized for this argument layout)."""
    forced = forced_backend()
    interpreting = triton_interpreting()
    lasting = True
    for impl in _candidates(op, device.type, forced, interpreting):
        why = impl.supports(*args)
        if why is None or (impl.backend == forced and isinstance(why, Preference)):
            return impl, lasting
        lasting = lasting and not isinstance(why, Transient)
    # Nothing can serve: say why, backend by backend.
    reasons = []
    for impl in _REGISTRY.get(op, ()):
        if forced is not None and impl.backend != forced:
            continue
        if not _serves_device(impl.backend, device.type, forced, interpreting):
            reasons.append(f"{impl.backend}: not available for {device.type} tensors")
        else:
            reasons.append(f"{impl.backend}: {impl.supports(*args)}")
    raise RuntimeError(f"kernelswap.{op}: no backend can serve this call"
                       + (f" with the backend forced to {forced!r}" if forced else "")
                       + " (" + "; ".join(reasons or ["nothing registered"]) + "). "
                       + "Unset KERNELSWAP_BACKEND / use_backend to let the dispatcher fall back.")


def choose_after(op: str, fn: Callable, args: tuple) -> Impl:
    """The implementation that would serve these arguments if the one whose function is `fn`
    declined: what a timed `supports` (ops/_measure.py) measures its candidate against."""
    x = next(a for a in args if isinstance(a, torch.Tensor))
    forced, interpreting = forced_backend(), triton_interpreting()
    later = False
    for impl in _candidates(op, x.device.type, None, interpreting):
        if impl.fn is fn:
            later = True
        elif later and (impl.supports(*args) is None or impl.backend == forced):
            return impl
    raise RuntimeError(f"kernelswap.{op}: nothing is registered after {fn.__name__} to fall back to")


def signature(args: tuple) -> tuple:
    """Everything the checks and `supports` predicates may read from `args` (on every call: kept lean)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append((a.shape, a.stride(), a.dtype, a.device, a.data_ptr() & 15))
        else:  # with its type: 1 and True (equal, one hash) must not share a memo entry and its check
            out.append((type(a), tuple(a) if isinstance(a, list) else a))
    return tuple(out)


class Plan:
    """One op's memo: argument layout -> the implementation that serves it (module docstring).

    plan(args, check, make_args): when `args`' signature is new, `check(*args)` (raises on
    bad input), then choose on `make_args()` (the args as the implementations take them,
    e.g. tokens flattened to (M, K)); either way, run the implementation on make_args()."""

    LIMIT = 4096  # distinct layouts kept per op (token counts vary); cleared when full

    def __init__(self, op: str):
        self.op = op
        self._memo: dict[tuple, Impl] = {}
        _PLANS.append(self)

    def __call__(self, args: tuple, check: Callable[..., None], make_args: Callable[[], tuple]):
        # TRITON_INTERPRET is not in the key: like Triton, which binds kernels to the interpreter
        # when they are defined, the memo takes it as fixed for the life of the process.
        key = (forced_backend(), signature(args))
        impl = self._memo.get(key)
        if impl is not None:
            return impl.fn(*make_args())
        check(*args)
        op_args = make_args()
        impl, lasting = _choose(self.op, op_args[0].device, op_args)
        if lasting:
            if len(self._memo) >= self.LIMIT:
                self._memo.clear()
            self._memo[key] = impl
        return impl.fn(*op_args)

    def clear(self) -> None:
        self._memo.clear()


_PLANS: list[Plan] = []


def clear_plans() -> None:
    """Forget every memoized choice (a new implementation was registered, or a test changed
    what a `supports` predicate answers)."""
    for plan in _PLANS:
        plan.clear()


def prepare_weights(op: str, *weights) -> None:
    """Make every weight layout that an implementation of `op` able to run here reads, for
    these weight buffers (the op's arguments after x). Graph-safe layers call this when
    their buffers are made or moved, so a forward (possibly under CUDA-graph capture)
    finds the layouts ready and allocates nothing that outlives it."""
    tensors = [w for w in weights if isinstance(w, torch.Tensor)]
    if not tensors:
        return
    device_type = tensors[0].device.type
    for impl in _candidates(op, device_type, None, triton_interpreting()):
        if impl.prepare is not None:
            impl.prepare(*weights)


def serving_backends(op: str, device: torch.device) -> list[str]:
    """Backends that could serve `op` on `device` on this machine, in preference order."""
    return [i.backend for i in _candidates(op, device.type, forced_backend(), triton_interpreting())]


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)


read_environment()
