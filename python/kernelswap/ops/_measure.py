"""Choosing between implementations by timing them, once per shape, on the call's own tensors.

Where no static rule says which of two implementations is faster (conv layers: our Triton
kernel or cuDNN; cuDNN's fused conv + add + ReLU, its conv then the epilogue, or its conv
with the bias: ops/conv_torch.py), the first call at a new shape runs both a few times on
its own inputs (like torch.backends.cudnn.benchmark) and the winner is remembered for the
process. A call first seen inside CUDA-graph capture cannot be timed: it gets a Transient
answer (the fallback now, a measurement on a later call outside capture).
"""
from __future__ import annotations

from typing import Callable

import torch

from .backend import Transient, choose_after

REPS = 5


def median_ms(fn: Callable, args: tuple) -> float:
    """Median of REPS CUDA-event timings of fn(*args), after one untimed call (compiles,
    autotunes, prepares weights)."""
    fn(*args)
    times = []
    for _ in range(REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


class Picks:
    """A `supports` answer by measurement: shape key -> None (the candidate was measured
    faster than what the dispatcher would run without it) or the reason it was not.

    The rival is not named by the caller: it is `backend.choose_after(op, candidate)`, the
    implementation the dispatcher falls back to when the candidate declines, so the timed
    choice and the static rules are one walk over the registered implementations."""

    def __init__(self, op: str, candidate: str):
        self.op, self.candidate = op, candidate
        self._picks: dict[tuple, str | None] = {}

    def reason(self, key: tuple, ours: Callable, args: tuple) -> str | None:
        if key not in self._picks:
            if torch.cuda.is_current_stream_capturing():
                return Transient(f"shape first seen inside CUDA-graph capture, not timed yet: the next backend")
            self._picks[key] = self._measure(ours, args)
        return self._picks[key]

    def _measure(self, ours, args) -> str | None:
        theirs = choose_after(self.op, ours, args)
        try:
            t_ours = median_ms(ours, args)
        except Exception as e:  # noqa: BLE001 - a candidate that fails to build or run must not break the model
            return f"{self.candidate} failed at this shape ({type(e).__name__}: {e}); {theirs.backend} serves it"
        t_theirs = median_ms(theirs.fn, args)
        if t_ours < t_theirs:
            return None
        return (f"{theirs.backend} ({theirs.fn.__name__.strip('_')}) measured faster at this shape "
                f"({t_theirs * 1e3:.1f} us vs {t_ours * 1e3:.1f} us for {self.candidate})")

    def __contains__(self, key: tuple) -> bool:
        return key in self._picks

    def __getitem__(self, key: tuple) -> str | None:
        return self._picks[key]
