"""Scratch memory a per-layout runner keeps per CUDA stream (ops/_raw.py, ops/_replay.py).

A runner's scratch (split-K partials, a quantized x, a recorded call's temporary buffers) is
never seen by the caller, and calls on one stream run in order, so they never use it at once:
it is made on a stream's first call and kept for the next ones, up to LIMIT bytes. Inside a
CUDA-graph capture it is made per call and not kept: that memory belongs to the graph's pool.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

LIMIT = 4 << 20  # bytes of scratch a runner keeps per stream (more: made per call)


class PerStream:
    """stream -> the scratch kept for it."""

    def __init__(self):
        self._kept: dict[int, Any] = {}
        self.pointers: dict[int, int] = {}  # stream -> data_ptr() of its kept scratch, where that is a tensor

    def get(self, stream: int, nbytes: int, make: Callable[[], Any]) -> Any:
        """The scratch of `stream`: the kept one, else make() (kept when nbytes <= LIMIT and no
        capture is under way)."""
        scratch = self._kept.get(stream)
        if scratch is None:
            scratch = make()
            if nbytes <= LIMIT and not torch.cuda.is_current_stream_capturing():
                self._kept[stream] = scratch
                if isinstance(scratch, torch.Tensor):
                    self.pointers[stream] = scratch.data_ptr()
        return scratch
