"""Per-call backend choice for kernelswap's ops.

Every public op has one implementation per backend:

  cuda       kernels compiled into the extension kernelswap._C
  triton     Triton kernels from kernelswap.kernels
  torch      fast compositions of torch ops on the GPU (dequantize + cuBLAS, cuDNN):
             taken where none of our kernels is faster, so a swap is never slower
  reference  plain torch (the CPU path, the fallback on every device, the test oracle)

Each op file registers its implementations here with a `supports(*args)` predicate
that returns None when the implementation can serve the call, or a reason string.
`dispatch` walks the implementations in the order of BACKENDS (then registration
order), skips
backends that are unavailable on this machine or not serving this device, and takes
the first that supports the call. The reference backend supports everything.

A user forces one backend with the environment variable KERNELSWAP_BACKEND or with
`use_backend(name)`; a forced backend that cannot serve a call raises instead of
falling back, so numerics can be debugged one backend at a time.
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


_REGISTRY: dict[str, list[Impl]] = {}


def _always(*args, **kwargs) -> None:
    return None


def register(op: str, backend: str, supports: Callable[..., str | None] = _always):
    """Decorator: `fn` serves `op` on `backend` whenever `supports(*args)` is None."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")

    def deco(fn):
        impls = _REGISTRY.setdefault(op, [])
        impls.append(Impl(backend, fn, supports))
        impls.sort(key=lambda i: BACKENDS.index(i.backend))  # stable: cuda, triton, torch, reference
        _candidates.cache_clear()
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
        name = _env_backend(os.environ.get("KERNELSWAP_BACKEND", ""))
    return name


@functools.lru_cache(maxsize=8)
def _env_backend(raw: str) -> str | None:
    env = raw.strip().lower()
    return _check_name(env) if env and env != "auto" else None


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
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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


def choose(op: str, device: torch.device, *args) -> Impl:
    """The implementation that serves `op` for these arguments (see module docstring)."""
    forced = forced_backend()
    interpreting = triton_interpreting()
    for impl in _candidates(op, device.type, forced, interpreting):
        if impl.supports(*args) is None:
            return impl
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


def dispatch(op: str, device: torch.device, *args):
    return choose(op, device, *args).fn(*args)


def serving_backends(op: str, device: torch.device) -> list[str]:
    """Backends that could serve `op` on `device` on this machine, in preference order."""
    return [i.backend for i in _candidates(op, device.type, forced_backend(), triton_interpreting())]


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)
