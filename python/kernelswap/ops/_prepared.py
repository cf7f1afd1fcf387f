"""Kernel-specific layouts of weight buffers, made once and kept while the buffer lives.

The public ops take weights in one documented format (kernelswap.ops.int4,
kernelswap.ops.sparse24). A kernel that wants another layout (for example a CUTLASS sparse
GEMM's reordered metadata) converts the weights the first time the layout is asked for and
keeps the result here, keyed by the source buffers' identity and version (identity alone for
tensors made under torch.inference_mode, which keep no version). The layers ask for
it when their buffers are made, moved or loaded (the `prepare` hooks, through
kernelswap.ops.backend.prepare_weights), never in a forward: a layout made during CUDA-graph
capture (or a torch.compile cudagraph warm-up) would live in the graph's private memory pool
and outlive the call. A miss while a stream is capturing is therefore an error that says how
to prepare first.
The cost is the memory of the converted copy; it is freed with the source buffer.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch import Tensor


_ALL: list["PreparedWeights"] = []


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def prepared_bytes(sources: list[Tensor]) -> int:
    """Bytes of every prepared layout made from any of `sources` (the device memory a layer's
    kernels hold beside its own buffers). Tensors shared by two layouts count twice."""
    ptrs = {t.data_ptr() for t in sources if isinstance(t, Tensor)}
    return sum(_tensor_bytes(value) for cache in _ALL for key, value in cache._cache.items()
               if key[0][0] in ptrs)


class PreparedWeights:
    def __init__(self, name: str):
        self.name = name
        self._cache: dict[tuple, Any] = {}
        _ALL.append(self)

    @staticmethod
    def _key(tensors: tuple[Tensor, ...]) -> tuple:
        # An inference tensor (made under torch.inference_mode) has no version counter: its key is
        # its identity alone, so an in-place change of one goes unseen until prepare() (as documented).
        return tuple((t.data_ptr(), -1 if t.is_inference() else t._version, str(t.device), tuple(t.shape), t.dtype)
                     for t in tensors)

    def get(self, tensors: tuple[Tensor, ...], make: Callable[[], Any], optional: bool = False) -> Any:
        """The prepared form of `tensors`, made by `make()` the first time. Missing under CUDA-graph
        capture it cannot be made: an error, or None when `optional` (the caller can do without)."""
        key = self._key(tensors)
        if key in self._cache:
            return self._cache[key]
        if tensors[0].is_cuda and torch.cuda.is_current_stream_capturing():
            if optional:
                return None
            raise RuntimeError(
                f"kernelswap: the {self.name} layout of a weight was not prepared before CUDA-graph capture; "
                f"move the model with .to(device) (or call kernelswap.prepare(model)) before capturing, and do "
                f"not modify swapped layers' buffers in place after that")
        value = make()
        self._cache[key] = value
        weakref.finalize(tensors[0], self._cache.pop, key, None)  # drop it with the source buffer
        return value

    def holds(self, tensors: tuple[Tensor, ...]) -> bool:
        """Whether the prepared form of `tensors` is made (a `supports` may decline under capture when not)."""
        return self._key(tensors) in self._cache

    def __len__(self) -> int:
        return len(self._cache)


_SPLITK = PreparedWeights("split-K tile counters (Triton GEMMs)")


def splitk_counters(w: Tensor) -> Tensor | None:
    """The split-K tile counters of the Triton GEMMs on weight `w` (N, ...): kernelswap.kernels.splitk's
    zeroed int32 set, one per weight, made by the `prepare` hooks (or on the first call outside
    capture). None under capture when none was made: the launch then makes a zeroed set for itself."""
    def make():
        from kernelswap.kernels.splitk import counters
        return counters(w.shape[0], w.device)
    return _SPLITK.get((w,), make, optional=True)


def prepare_splitk_counters(w: Tensor, *rest) -> None:
    """A backend's `prepare` hook (backend.register) for a Triton GEMM whose only prepared state is
    the split-K counters of its weight, the op's first argument after x."""
    splitk_counters(w)
