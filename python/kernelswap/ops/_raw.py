"""Raw launches: the C entry points of kernelswap._C (csrc/raw_entry.h), called through ctypes.

A call of one of _C's ops from Python goes through the dispatcher and the stable ABI's boxing:
about 11 us of host time per call on the H200 machine (benchmarks/overhead_quick.py --profile),
half of what the nn.Linear a swapped layer replaces costs in all, and two of them (quantize,
then GEMM) cost more than that layer. The layers' per-layout runners (ops/_runner.py) avoid
it: for one layer and input layout, `gemv_runner` / `gemm_runner` make a plan in C (the
checks, the kernel choice and every fixed argument, once) and return fn(x), which per call
allocates the output through torch (so CUDA-graph capture and the caching allocator see it as
they see any op's), reads the current stream and makes one foreign call: the run as a plain
function of _C's Python module (csrc/py_entry.cpp: 0.07 us on the development CPU) where the build
has it, else through ctypes (0.44 us there: five c_void_p conversions). The scratch a plan asks
for (split-K partials, the quantized x) is kept per stream (ops/_scratch.py). Tracing, autograd
and fake tensors never get here: the runners are only made for plain eager calls, and
everything else still goes through the registered ops.

Any reason the raw path cannot serve (no extension, an extension without these entry points,
KERNELSWAP_RAW_LAUNCH=0 read at import, a tensor not in the layout the C plan assumes) makes
the runner factories return None, and the op-based runner serves instead. A run on an input
that is not 16-byte aligned takes the op path for that call.
"""
from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable

import torch
from torch import Tensor

from .. import _ext
from ._scratch import PerStream

ENABLED = os.environ.get("KERNELSWAP_RAW_LAUNCH", "1") != "0"
VERSION = 2  # kernelswap_raw_version() of the C signatures and kinds below
MISALIGNED = 2  # a run's answer when x or out is not 16-byte aligned (csrc/raw_entry.h)

# The families, as the C entry points number them.
GEMV_INT4, GEMV_INT8_WEIGHT, GEMV_INT8, GEMV_SPARSE24, GEMV_SPARSE24_INT8 = 0, 1, 2, 3, 4
GEMV_INT8_WEIGHT_ROWS, GEMV_INT8_ROWS = 5, 6  # the same on the int8 (N, K) weight as it lies
GEMM_INT8_LINEAR, GEMM_FP8_LINEAR, GEMM_SPARSE24, GEMM_SPARSE24_INT8, GEMM_SPARSE24_FP8 = 0, 1, 2, 3, 4
GEMM_FP8_LINEAR_FAST = 5  # GEMM_FP8_LINEAR with FP8 fast accumulation at M > 64
MIXED_INT4, MIXED_INT8_WEIGHT = 0, 1  # kernelswap_mixed_plan's kinds (csrc/sm90_mixed_ops.cu)

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """_C opened through ctypes with its raw entry points declared, or None (see `reason`)."""
    return _open()[0]


def reason() -> str | None:
    """Why the raw path is off in this process (None: it is on)."""
    return _open()[1]


@functools.lru_cache(maxsize=None)
def _open() -> tuple[ctypes.CDLL | None, str | None]:
    if not ENABLED:
        return None, "off (KERNELSWAP_RAW_LAUNCH=0)"
    if not _ext.load():
        return None, "kernelswap._C is not loaded"
    try:
        lib = ctypes.CDLL(_ext.library_path())  # the library torch already loaded: the same handle
    except (OSError, TypeError) as e:
        return None, f"kernelswap._C cannot be opened through ctypes: {e}"
    if not hasattr(lib, "kernelswap_raw_version"):
        return None, "kernelswap._C predates the raw entry points (csrc/raw_entry.h); rebuild it"
    lib.kernelswap_raw_version.restype = _I
    if lib.kernelswap_raw_version() != VERSION:
        return None, f"kernelswap._C has raw entry points of version {lib.kernelswap_raw_version()}, not {VERSION}"
    lib.kernelswap_raw_error.restype = ctypes.c_char_p
    lib.kernelswap_raw_free.argtypes, lib.kernelswap_raw_free.restype = [_P], None
    lib.kernelswap_gemv_plan.argtypes = [_I, _I, _I, _P, _P, _P, _P, _P, _L, _L, _L, _L, _I, ctypes.POINTER(_L)]
    lib.kernelswap_gemv_plan.restype = _P
    lib.kernelswap_gemm_plan.argtypes = [_I, _I, _P, _P, _P, _P, _L, _L, _L, _I, ctypes.POINTER(_L)]
    lib.kernelswap_gemm_plan.restype = _P
    for run in (lib.kernelswap_gemv_run, lib.kernelswap_gemm_run):
        run.argtypes, run.restype = [_P, _P, _P, _P, _P], _I
    if hasattr(lib, "kernelswap_mixed_plan"):  # a _C from before the mixed-input GEMMs has none
        lib.kernelswap_mixed_plan.argtypes = [_I, _I, _P, _P, _P, _P, _P, _L, _L, _L, _L, _I, ctypes.POINTER(_L)]
        lib.kernelswap_mixed_plan.restype = _P
    return lib, None


def fast(run_c) -> Callable:
    """The same raw run as _C's Python function (csrc/py_entry.cpp) where _C has one, else run_c."""
    mod = _ext.python_module()
    name = run_c.__name__.removeprefix("kernelswap_")
    return getattr(mod, name, run_c) if mod is not None else run_c


def error() -> str:
    lib = library()
    return lib.kernelswap_raw_error().decode(errors="replace") if lib is not None else "raw path off"


class _Plan:
    """A C plan, freed with this object."""

    def __init__(self, handle: int, free: Callable[[int], None]):
        self.handle, self._free = handle, free

    def __del__(self):
        try:
            self._free(self.handle)
        except Exception:  # noqa: BLE001 - interpreter shutdown may have taken ctypes first
            pass


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def plain(t: Tensor | None, dtype: torch.dtype | None, device: torch.device) -> bool:
    """Whether `t` (None counts) is what a C plan reads through a bare pointer: contiguous, 16-byte
    aligned, on `device`, of `dtype` (None: any)."""
    return t is None or (t.device == device and t.is_contiguous() and t.data_ptr() % 16 == 0
                         and (dtype is None or t.dtype == dtype))


_ONE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def shaped_like(dtype: torch.dtype, device: torch.device, shape: tuple) -> Tensor | None:
    """A view of shape `shape` with stride 0 everywhere, of one element of `dtype` kept on the
    device: torch.empty_like of it is a new contiguous tensor of that shape (empty_like makes
    overlapping inputs contiguous), and costs less host time per call than x.new_empty(shape),
    which parses the shape each time (0.69 against 1.07 us on the development CPU).
    None when no element is kept yet and a capture is under way (it would outlive the capture)."""
    one = _ONE.get((dtype, device))
    if one is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        one = _ONE[(dtype, device)] = torch.empty(1, dtype=dtype, device=device)
    return one.expand(shape)


def _runner(run_c, plan: _Plan, index: int, mn: tuple[int, int], scratch_bytes: int, keep: tuple,
            fallback: Callable, dtype: torch.dtype) -> Callable:
    """fn(x (M, K) contiguous, of `dtype`) -> (M, N) x.dtype through one raw call (mn = (M, N), the
    plan's); `keep` holds the tensors the plan points into (the runner lives as long as they must);
    `fallback` serves misaligned calls.
    fn.for_shape(out_shape) is the same runner for a contiguous x of any leading dims that hold
    M tokens in all, its output made in out_shape (..., N) directly: the plan reads x through its
    pointer, so a (batch, 1, K) decode input needs no view in and out."""
    handle, current, empty_like = plan.handle, torch._C._cuda_getCurrentRawStream, torch.empty_like
    run_py = fast(run_c)
    kept = PerStream()
    kept_ptr = kept.pointers.get  # stream -> address of its kept scratch
    device = torch.device("cuda", index)
    new_scratch = lambda: torch.empty(scratch_bytes, dtype=torch.uint8, device=device)  # noqa: E731

    def make(out_shape: tuple) -> Callable:
        miss = fallback if out_shape == mn else (
            lambda x: fallback(x.reshape(mn[0], -1)).view(out_shape))
        like = shaped_like(dtype, device, out_shape)

        def run(x: Tensor) -> Tensor:
            out = empty_like(like) if like is not None else x.new_empty(out_shape)
            stream = current(index)
            if scratch_bytes:
                ptr = kept_ptr(stream)
                if ptr is None:  # this stream's first call, or scratch that is not kept
                    scratch = kept.get(stream, scratch_bytes, new_scratch)
                    ptr = scratch.data_ptr()
                rc = run_py(handle, x.data_ptr(), out.data_ptr(), ptr, stream)
            else:
                rc = run_py(handle, x.data_ptr(), out.data_ptr(), None, stream)
            if rc:
                if rc == MISALIGNED:
                    return miss(x)
                raise RuntimeError(f"kernelswap: {error()}")
            return out

        run.plan, run.keep, run.for_shape = plan, keep, make  # alive with the runner
        run.c_run = run_py  # the entry point it calls (benchmarks/host_breakdown.py times it alone)
        return run

    return make(mn)


def gemv_runner(x: Tensor, fmt: int, group_size: int, w: Tensor, scales: Tensor, zeros: Tensor | None,
                bias: Tensor | None, counters: Tensor, n: int, fallback: Callable) -> Callable | None:
    """A raw runner of the decode GEMV (csrc/gemv/gemv_raw.cu) for x's layout, or None."""
    lib = library()
    dev = x.device
    if lib is None or x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not all(plain(t, None, dev) for t in (w, scales, zeros)) or not plain(bias, torch.float32, dev) \
            or not plain(counters, torch.int32, dev):
        return None
    ws = _L(0)
    handle = lib.kernelswap_gemv_plan(fmt, group_size, int(x.dtype == torch.bfloat16), _ptr(w), _ptr(scales),
                                      _ptr(zeros), _ptr(bias), _ptr(counters), x.shape[0], x.shape[1], n,
                                      w.shape[0], dev.index, ctypes.byref(ws))
    if not handle:
        raise RuntimeError(f"kernelswap: {error()}")
    plan = _Plan(handle, lib.kernelswap_raw_free)
    return _runner(lib.kernelswap_gemv_run, plan, dev.index, (x.shape[0], n), ws.value,
                   (w, scales, zeros, bias, counters), fallback, x.dtype)


def dense_linear(kind: int, bind: Callable) -> Callable:
    """Impl.raw for a dense 8-bit linear op (x, w_q, w_scale, bias): quantize + GEMM in one raw
    call; bind(w_q, w_scale, bias) is the op-based runner it falls back to."""
    from ._cuda import bias32

    def raw(x, w_q, w_scale, bias):
        return gemm_runner(x, kind, w_q, None, w_scale, bias32(bias), w_q.shape[0], x.shape[1],
                           bind(w_q, w_scale, bias))
    return raw


def sparse_linear(kind: int, layout: Callable, bind: Callable) -> Callable:
    """Impl.raw for a 2:4 linear op (x, values, meta[, w_scale], bias): layout(values, meta) gives the
    CUTLASS sm_90a (values, meta); bind(values, meta, ...) is the op-based runner it falls back to."""
    from ._cuda import bias32

    def raw(x, values, meta, *rest):
        v, e = layout(values, meta)
        w_scale = rest[0] if len(rest) == 2 else None
        return gemm_runner(x, kind, v, e, w_scale, bias32(rest[-1]), values.shape[0], x.shape[1],
                           bind(values, meta, *rest))
    return raw


def gemm_runner(x: Tensor, kind: int, w: Tensor, meta: Tensor | None, w_scale: Tensor | None,
                bias: Tensor | None, n: int, k: int, fallback: Callable) -> Callable | None:
    """A raw runner of an sm_90a CUTLASS GEMM (csrc/sm90_gemm_ops.cu), quantizing x first for the
    8-bit kinds, for x's layout; or None."""
    lib = library()
    dev = x.device
    if lib is None or x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not (plain(w, None, dev) and plain(meta, None, dev) and plain(w_scale, torch.float32, dev)
            and plain(bias, torch.float32, dev)):
        return None
    scratch = _L(0)
    handle = lib.kernelswap_gemm_plan(kind, int(x.dtype == torch.bfloat16), _ptr(w), _ptr(meta), _ptr(w_scale),
                                      _ptr(bias), x.shape[0], n, k, dev.index, ctypes.byref(scratch))
    if not handle:
        raise RuntimeError(f"kernelswap: {error()}")
    plan = _Plan(handle, lib.kernelswap_raw_free)
    return _runner(lib.kernelswap_gemm_run, plan, dev.index, (x.shape[0], n), scratch.value,
                   (w, meta, w_scale, bias), fallback, x.dtype)


def mixed_runner(x: Tensor, kind: int, w: Tensor, scale: Tensor | None, zero: Tensor | None,
                 w_scale: Tensor | None, bias: Tensor | None, group_size: int, n: int,
                 fallback: Callable) -> Callable | None:
    """A raw runner of a weight-only layer's sm_90a mixed-input GEMM (csrc/sm90_mixed_ops.cu) for
    x's layout, or None."""
    lib = library()
    dev = x.device
    if lib is None or not hasattr(lib, "kernelswap_mixed_plan") or x.dim() != 2 or \
            x.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not (plain(w, None, dev) and all(plain(t, torch.float32, dev) for t in (scale, zero, w_scale, bias))):
        return None
    scratch = _L(0)
    handle = lib.kernelswap_mixed_plan(kind, int(x.dtype == torch.bfloat16), _ptr(w), _ptr(scale), _ptr(zero),
                                       _ptr(w_scale), _ptr(bias), group_size, x.shape[0], n, x.shape[1], dev.index,
                                       ctypes.byref(scratch))
    if not handle:
        raise RuntimeError(f"kernelswap: {error()}")
    plan = _Plan(handle, lib.kernelswap_raw_free)
    return _runner(lib.kernelswap_gemm_run, plan, dev.index, (x.shape[0], n), scratch.value,
                   (w, scale, zero, w_scale, bias), fallback, x.dtype)
