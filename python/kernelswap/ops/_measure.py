"""Choosing between implementations by timing them, once per shape, on the call's own tensors.

Where no static rule says which of two implementations is faster (conv layers: our
Triton kernel or cuDNN; cuDNN's fused conv + add + ReLU or its plain conv), the first
call at a new shape runs both a few times on its own inputs (like
torch.backends.cudnn.benchmark) and the winner is remembered for the process. A call
first seen inside CUDA-graph capture cannot be timed: it gets a Transient answer (the
fallback now, a measurement on a later call outside capture).
"""
from __future__ import annotations

from typing import Callable

import torch

from .backend import Transient

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
    """shape key -> None (the candidate was measured faster) or the reason it was not."""

    def __init__(self, candidate: str, fallback: str):
        self.candidate, self.fallback = candidate, fallback
        self._picks: dict[tuple, str | None] = {}

    def reason(self, key: tuple, ours: Callable, theirs: Callable, args: tuple) -> str | None:
        if key not in self._picks:
            if torch.cuda.is_current_stream_capturing():
                return Transient(f"shape first seen inside CUDA-graph capture, not timed yet: {self.fallback}")
            self._picks[key] = self._measure(ours, theirs, args)
        return self._picks[key]

    def _measure(self, ours, theirs, args) -> str | None:
        try:
            t_ours = median_ms(ours, args)
        except Exception as e:  # noqa: BLE001 - a candidate that fails to build or run must not break the model
            return f"{self.candidate} failed at this shape ({type(e).__name__}: {e}); {self.fallback}"
        t_theirs = median_ms(theirs, args)
        if t_ours < t_theirs:
            return None
        return (f"{self.fallback} measured faster at this shape ({t_theirs * 1e3:.1f} us vs "
                f"{t_ours * 1e3:.1f} us for {self.candidate})")

    def __contains__(self, key: tuple) -> bool:
        return key in self._picks

    def __getitem__(self, key: tuple) -> str | None:
        return self._picks[key]
