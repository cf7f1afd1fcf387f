"""How one callable is timed, and the measured peaks that results are compared with.

GPU: triton.testing.do_bench (CUDA events; it flushes L2 before every repetition)
with quantiles p50/p20/p80, after its own warm-up. On top of that the harness
rotates through several copies of a case's inputs and weights so that the working
set exceeds L2 (`copies_for`), and it never times zeros (inputs are randn).
CPU (smoke runs, tests): wall clock over a few repetitions. Tests use FakeTimer.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch


@dataclass(frozen=True)
class Timing:
    p50_us: float
    p20_us: float
    p80_us: float


class Timer(Protocol):
    def __call__(self, fn: Callable[[], object]) -> Timing: ...


class DoBenchTimer:
    """triton.testing.do_bench medians; warm-up and repetition budgets in ms."""

    def __init__(self, warmup_ms: float = 25, rep_ms: float = 100):
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms

    def __call__(self, fn):
        from triton.testing import do_bench

        p50, p20, p80 = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=[0.5, 0.2, 0.8])
        return Timing(p50 * 1e3, p20 * 1e3, p80 * 1e3)


class WallTimer:
    """CPU wall clock: one warm-up call, then `reps` timed calls."""

    def __init__(self, reps: int = 5):
        self.reps = reps

    def __call__(self, fn):
        fn()
        samples = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
        return _quantiles(samples)


class FakeTimer:
    """For tests: calls fn once (so errors surface), returns times from `table`.

    table maps a label (set by the harness before each call through `label`) to p50 in us;
    anything missing gets `default_us`. p20/p80 are p50 -/+ 5%."""

    def __init__(self, table: dict[str, float] | None = None, default_us: float = 100.0):
        self.table, self.default_us, self.label, self.calls = table or {}, default_us, "", []

    def __call__(self, fn):
        fn()
        self.calls.append(self.label)
        p50 = self.table.get(self.label, self.default_us)
        return Timing(p50, p50 * 0.95, p50 * 1.05)


def _quantiles(samples: list[float]) -> Timing:
    if len(samples) == 1:
        return Timing(samples[0], samples[0], samples[0])
    q = statistics.quantiles(samples, n=10, method="inclusive")  # deciles
    return Timing(statistics.median(samples), q[1], q[7])


def default_timer(device: torch.device, quick: bool) -> Timer:
    """GPU: 50 ms of repetitions still gives ~20 samples for the slowest target case
    (P6, ~2.6 ms) and hundreds for decode shapes, at half do_bench's default cost; a full
    run times ~400 cases, so this is what lets it fit a session slot."""
    if device.type == "cuda":
        return DoBenchTimer(5, 20) if quick else DoBenchTimer(10, 50)
    return WallTimer(3 if quick else 5)


# ---------------------------------------------------------------- L2 and rotation
def l2_bytes(device: torch.device) -> int:
    """The device's L2 size, read off the device (0 on CPU: no rotation there)."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))


# The smallest conv layers (~100 KB a copy) would want ~1000 copies, each built at setup; the cap
# keeps setup under a second, and do_bench's own L2 flush before every repetition covers the rest.
MAX_COPIES = 64


def copies_for(bytes_per_copy: int, l2: int) -> int:
    """How many copies of a case's tensors make a working set of at least twice L2."""
    if l2 <= 0 or bytes_per_copy <= 0:
        return 1
    return max(1, min(MAX_COPIES, math.ceil(2 * l2 / bytes_per_copy)))


# ---------------------------------------------------------------- measured peaks
@dataclass(frozen=True)
class Peak:
    name: str  # "copy", "bf16_mm", "int_mm"
    value: float  # GB/s for copy, TFLOP/s (TOP/s) for the matmuls
    unit: str
    shape: str
    timing: Timing | None
    error: str = ""


def peak_sizes(device: torch.device) -> tuple[int, int]:
    """(copy elements, square matmul size): TARGETS.md's 8192^3 on GPU, tiny on CPU."""
    return (256 * 2**20, 8192) if device.type == "cuda" else (2**20, 256)


def measure_peaks(timer: Timer, device: torch.device) -> dict[str, Peak]:
    """Device copy bandwidth (read + write), bf16 matmul and torch._int_mm rates, this run."""
    n_copy, s = peak_sizes(device)
    peaks: dict[str, Peak] = {}

    def one(name, unit, shape, make, amount):
        try:
            fn = make()
            t = timer(fn)
            peaks[name] = Peak(name, amount / (t.p50_us * 1e-6) / 1e9 if unit == "GB/s"
                               else amount / (t.p50_us * 1e-6) / 1e12, unit, shape, t)
        except Exception as e:  # noqa: BLE001 - a peak that cannot be measured is recorded
            peaks[name] = Peak(name, float("nan"), unit, shape, None, f"{type(e).__name__}: {e}")

    def copy():
        src = torch.randn(n_copy, device=device)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    def bf16_mm():
        a = torch.randn(s, s, device=device, dtype=torch.bfloat16)
        b = torch.randn(s, s, device=device, dtype=torch.bfloat16)
        return lambda: a @ b

    def int_mm():
        a = torch.randint(-127, 128, (s, s), device=device, dtype=torch.int8)
        # b column-major (a weight (N, K) transposed), cuBLAS's int8 layout: with a row-major b
        # this read 129.8 TOP/s on the H100, where TARGETS.md lists 954 (not re-measured yet).
        b = torch.randint(-127, 128, (s, s), device=device, dtype=torch.int8).t()
        return lambda: torch._int_mm(a, b)

    one("copy", "GB/s", f"{n_copy * 4 >> 20} MiB fp32", copy, 2.0 * n_copy * 4)
    one("bf16_mm", "TFLOP/s", f"{s}x{s}x{s}", bf16_mm, 2.0 * s**3)
    one("int_mm", "TOP/s", f"{s}x{s}x{s}", int_mm, 2.0 * s**3)
    return peaks


def capture_graph(fn: Callable[[], object], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, object]:
    """(a CUDA graph of fn(), what fn returned during capture): warm-up calls on a side stream
    first, as torch's CUDA-graph docs prescribe. Replays rewrite that output in place."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def replay_ms(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    """ms per replay of `graph`, event-timed over `replays` replays after one untimed replay."""
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays
