"""ks.pipeline: feed CPU batches to a GPU model with the next batch's copy overlapping this one's compute.

    for out in ks.pipeline(model, loader_batches):   # model: an nn.Module, a ks.capture runner, any callable
        ...                                          # outputs come in the order of the batches

A plain loop `for x in loader: model(x.to("cuda"))` leaves the GPU idle while each batch
crosses PCIe (a blocking copy from pageable memory: the host stages it first). The pipeline
keeps `prefetch` batches in flight: each batch is put in pinned (page-locked) host memory,
copied on a stream of its own with non_blocking=True, and an event marks the copy done;
the model runs on the current stream, which waits for that event only, so the copy of
batch i+1 runs on the copy engine while batch i computes.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils import _pytree as pytree


def _pinned(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_pinned():
        return t.pin_memory()
    return t


def _resolve(device) -> torch.device:
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"ks.pipeline: device={str(device)!r} but CUDA is not available here; pass "
                               f"device=None (the GPU when there is one, else a plain loop on the CPU) or 'cpu'")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


class _Staged:
    """One batch on its way to the GPU: the device tensors, the event of their copy, and the
    pinned host tensors (kept until the copy is done)."""

    def __init__(self, batch: Any, device: torch.device, stream: torch.cuda.Stream, pin: bool):
        host = pytree.tree_map(_pinned, batch) if pin else batch
        with torch.cuda.stream(stream):
            self.batch = pytree.tree_map(
                lambda t: t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t, host)
            self.copied = torch.cuda.Event()
            self.copied.record(stream)
        # torch's pinned-memory allocator keeps a block that a non-blocking copy reads until the
        # copy is done, so the host tensors need not outlive the copy here; held until take() anyway.
        self.host = host

    def take(self, compute: torch.cuda.Stream) -> Any:
        """The batch, for use on `compute`: wait for its copy there, and tell the allocator the
        tensors (allocated on the copy stream) are in use on `compute` too, so their memory is
        not handed out again before the compute that reads them has run."""
        compute.wait_event(self.copied)
        for t in pytree.tree_leaves(self.batch):
            if isinstance(t, torch.Tensor) and t.device.type == "cuda":
                t.record_stream(compute)
        self.host = None
        return self.batch


def pipeline(model: Callable, batches: Iterable, device=None, *, prefetch: int = 1,
             pin_memory: bool = True) -> Iterator:
    """Yield model(batch) for each batch of `batches`, in order, each batch moved to `device` first.

    A batch is a tensor or a pytree of them (tuple/list/dict; non-tensors pass through), given
    to the model as one argument: model(batch_on_device). For a DataLoader's (inputs, labels)
    pairs pass e.g. `lambda b: model(b[0])`. On CUDA, up to `prefetch` next batches are copied
    (pinned host memory unless pin_memory=False, their own stream, non-blocking) while the
    model computes the current one; the model runs on the current stream. Batches already
    pinned (DataLoader(pin_memory=True)) are not copied on the host again.

    device=None: the current CUDA device when CUDA is available; otherwise, and for
    device="cpu", the pipeline degrades to the plain loop `for b in batches: yield model(b
    moved to the device)`, with the same results. device="cuda" without CUDA is an error.

    Each batch's compute is issued only when the generator resumes for it, so an output the
    model writes into reused memory (a ks.capture runner with reuse_outputs=True) stays valid
    until the next output is requested.
    """
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
        raise ValueError(f"ks.pipeline: prefetch must be a positive int (batches copied ahead), got {prefetch!r}")
    device = _resolve(device)  # checked now, not at the first next()
    if device.type != "cuda":
        return _plain(model, batches, device)
    return _overlapped(model, batches, device, prefetch, pin_memory)


def _overlapped(model: Callable, batches: Iterable, device: torch.device, prefetch: int, pin: bool) -> Iterator:
    # No device context is held across a yield (it would change the caller's current device).
    copy_stream = torch.cuda.Stream(device)
    copy_stream.wait_stream(torch.cuda.current_stream(device))  # batches already on the GPU were made there
    ahead: deque[_Staged] = deque()
    it = iter(batches)
    first = next(it, _END)
    if first is not _END:
        ahead.append(_Staged(first, device, copy_stream, pin))
    while ahead:
        batch = ahead.popleft().take(torch.cuda.current_stream(device))
        out = model(batch)
        # The next copies are issued after this compute was queued and before the caller gets its
        # output (which it may synchronize on), so the copy engine runs during the compute.
        while len(ahead) < prefetch:
            nxt = next(it, _END)
            if nxt is _END:
                break
            ahead.append(_Staged(nxt, device, copy_stream, pin))
        del batch
        yield out


_END = object()


def _plain(model: Callable, batches: Iterable, device: torch.device) -> Iterator:
    """The loop the pipeline stands for: each batch moved to `device`, then the model."""
    for b in batches:
        yield model(pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, b))
