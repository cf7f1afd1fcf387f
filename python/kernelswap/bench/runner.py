"""The loop that times every provider of an op at a shape and turns it into CSV rows.

One row per (op, provider, shape, dtype), whatever happened: "ok" with its numbers,
"error" with the message, "unsupported" when a forced backend cannot serve the call,
"absent" when a peer's package is missing, "skipped" with the reason (time budget,
--quick). A time budget keeps a run inside its slot: once it is spent, every
remaining case is still written, as skipped.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import itertools
import math
import time
from dataclasses import dataclass, field

import torch

from .providers import Absent, Case, Provider
from .timing import Peak, Timer, copies_for

# Ops whose math is int8 (their compute peak is torch._int_mm's, not bf16's).
INT8_MATH_OPS = ("int8_linear", "sparse24_int8_linear", "int8_scaled_mm")
# A torch.compile of a model takes 10-60 s (TARGETS.md: MobileNetV2 11 s); do not start one with less left.
SLOW_RESERVE_S = 60


@dataclass
class Budget:
    seconds: float | None  # None: no limit
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.monotonic() - self.start)

    def spent(self) -> bool:
        return self.left() <= 0


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:240]}"


class Runner:
    def __init__(self, timer: Timer, device: torch.device, env: dict[str, str], peaks: dict[str, Peak],
                 l2: int, budget: Budget, quick: bool = False, shape_set: str = ""):
        self.timer, self.device, self.env, self.peaks = timer, device, env, peaks
        self.l2, self.budget, self.quick, self.shape_set = l2, budget, quick, shape_set
        self.rows: list[dict] = []
        self.deferred: list = []  # the compile pass: (shape set, callable), run after everything else

    def defer(self, fn) -> None:
        self.deferred.append((self.shape_set, fn))

    def run_deferred(self) -> None:
        while self.deferred:
            self.shape_set, fn = self.deferred.pop(0)
            fn()

    # ------------------------------------------------------------ rows
    def row(self, **fields) -> dict:
        r = {"shape_set": self.shape_set, **self.env, **fields}
        self.rows.append(r)
        return r

    def peak_rows(self) -> None:
        for p in self.peaks.values():
            t = p.timing
            self.row(op="peak", provider=p.name, kind="peak", shape=p.shape, dtype="", status="ok" if t else "error",
                     p50_us=t.p50_us if t else None, p20_us=t.p20_us if t else None, p80_us=t.p80_us if t else None,
                     tflops=p.value if p.unit != "GB/s" else None, gbps=p.value if p.unit == "GB/s" else None,
                     note=p.error or p.unit)

    # ------------------------------------------------------------ one op at one shape
    def run_op(self, op: str, shape, dtype: torch.dtype, providers: list[Provider], defer: bool = True) -> None:
        """One row per provider; providers that compile wait in `deferred` (run last) unless defer=False."""
        for p in providers:
            base = dict(op=op, provider=p.name, kind=p.kind, shape=shape.label, dtype=_dtype_name(dtype))
            if p.requires and importlib.util.find_spec(p.requires.split(".")[0]) is None:
                self.row(**base, status="absent", note=f"{p.requires} not importable")
            elif self.budget.spent():
                self.row(**base, status="skipped", note="time budget spent")
            elif p.slow and self.quick:
                self.row(**base, status="skipped", note="--quick leaves out providers that compile")
            elif p.slow and defer:
                self.defer(lambda op=op, shape=shape, dtype=dtype, p=p: self.run_op(op, shape, dtype, [p], defer=False))
            elif p.slow and self.budget.left() < SLOW_RESERVE_S:
                self.row(**base, status="skipped", note=f"under {SLOW_RESERVE_S} s of budget left for a compile")
            else:
                self.row(**base, **self._time(op, p, shape, dtype))

    def _time(self, op: str, p: Provider, shape, dtype) -> dict:
        try:
            case = p.make(shape, dtype, self.device)
        except Absent as e:
            return dict(status="absent", note=str(e))
        except Exception as e:  # noqa: BLE001 - recorded, never dropped
            _free(self.device)
            return dict(status="error", note="setup: " + short_error(e))
        args = []
        try:
            n = copies_for(case.weight_bytes + case.io_bytes, self.l2)
            args = [case.new_args() for _ in range(n)]  # rotated so the working set exceeds L2
            cycle = itertools.cycle(args)
            fn = case.fn

            def call():
                return fn(*next(cycle))

            ctx = _forced(p.backend) if p.kind == "ours" else contextlib.nullcontext()
            with ctx:
                if hasattr(self.timer, "label"):
                    self.timer.label = f"{op}|{p.name}|{shape.label}|{_dtype_name(dtype)}"
                t = self.timer(call)
        except Exception as e:  # noqa: BLE001
            status = "unsupported" if "no backend can serve" in str(e) else "error"
            return dict(status=status, note=short_error(e))
        finally:
            del args
            _free(self.device)
        return dict(status="ok", p50_us=t.p50_us, p20_us=t.p20_us, p80_us=t.p80_us,
                    **self.rates(op, case, t.p50_us), weight_mb=case.weight_bytes / 2**20,
                    note=case.note + (f"; {n} copies rotated" if n > 1 else ""))

    def rates(self, op: str, case: Case, p50_us: float) -> dict:
        """TFLOP/s, GB/s, and the % of whichever measured peak bounds this case (roofline)."""
        nbytes = case.weight_bytes + case.io_bytes
        tflops = case.flops / p50_us / 1e6
        gbps = nbytes / p50_us / 1e3
        compute = self.peaks.get("int_mm" if op in INT8_MATH_OPS else "bf16_mm")
        copy = self.peaks.get("copy")
        out = dict(tflops=tflops, gbps=gbps)
        if compute is None or copy is None or not (compute.value > 0 and copy.value > 0):
            return out
        ridge = compute.value * 1e12 / (copy.value * 1e9)  # FLOP per byte where the two bounds meet
        if case.flops / max(nbytes, 1) < ridge:
            return dict(out, pct_peak=100.0 * gbps / copy.value, peak="copy")
        return dict(out, pct_peak=100.0 * tflops / compute.value, peak=compute.name)


@contextlib.contextmanager
def _forced(backend: str | None):
    from kernelswap.ops import use_backend

    with use_backend(backend):
        yield


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except RuntimeError:  # a sticky CUDA error: the next case will record it too
            pass


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))
