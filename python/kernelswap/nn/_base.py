"""What every kernelswap module shares: a format version, fixed-dtype buffers, checks,
prepared weight layouts, and the per-layout fast path of forward.

Swapped modules keep plain tensors as buffers (no Parameters: they are inference
only), so `state_dict()` round-trips, loads on a CPU-only machine and saves with
safetensors. Each module class carries FORMAT_VERSION, stored in its state_dict as
the int32 buffer `format_version`; loading a state_dict written by another version is
an error that names the layer, instead of silently misreading packed weights.

Graph-safe: every kernel-specific layout of the weights (kernelswap.ops.prepare_weights)
is made when the buffers are made, moved (`.to`, `.cuda`, `.half`) or loaded, never in a
forward that may be under CUDA-graph capture; `prepare()` makes them again after an
in-place change of a buffer.

Host time: a forward call is decided once per input layout (shape, strides, dtype,
device, 16-byte alignment, forced backend): the checks, the backend choice and the bound kernel call are
kept in a runner (kernelswap.ops._runner), so later calls with that layout are a dict
lookup and the kernel. The runners are bound to the buffers they were made from: assigning a
buffer (`layer.w_q = t`, register_buffer) or prepare() drops them. Tracing, autograd and fake
tensors take the op through the dispatcher instead.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import ops
from ..ops import _runner
from ..ops._define import tracing as _tracing
from ..ops.backend import forced_backend

Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled


class _Runners(dict):
    """input layout -> runner (kernelswap.ops._runner), bound to the layer's buffers as they
    were when it was made. Not state: a copy of the module (deepcopy, pickle) starts with
    none, since its runners would be bound to the original's buffers."""

    LIMIT = 64  # layouts kept per layer (token counts vary); cleared when full

    def __deepcopy__(self, memo):
        return _Runners()

    def __reduce__(self):
        return _Runners, ()


class _Buffers(dict):
    """A layer's `_buffers`: setting or deleting an entry drops the layer's runners, which point at
    the tensors they were made from. Every way torch replaces a buffer comes here: attribute
    assignment and register_buffer, `_apply`, and torch.func.functional_call (which sets the
    entries directly, then puts the originals back)."""

    __slots__ = ("runs",)

    def __init__(self, runs: _Runners):
        super().__init__()
        self.runs = runs

    def __setitem__(self, name, value):
        super().__setitem__(name, value)
        self._drop()

    def __delitem__(self, name):
        super().__delitem__(name)
        self._drop()

    def _drop(self):
        runs = getattr(self, "runs", None)  # unset while unpickling: the entries come before the slot
        if runs is not None:
            runs.clear()


class KernelswapModule(nn.Module):
    FORMAT_VERSION = 1
    # Buffers whose dtype is part of the op's weight format (e.g. int4 scales are fp16):
    # model.half() / .bfloat16() / .float() must not convert them, only move them.
    FIXED_DTYPE_BUFFERS: tuple[str, ...] = ()

    # The kernelswap op forward calls (a name in kernelswap.ops); set by each subclass.
    OP: str = ""

    def __init__(self, name: str | None = None, device=None):
        super().__init__()
        self.layer_name = name  # for error messages; not part of the state
        self._runs = _Runners()
        self._buffers = _Buffers(self._runs)
        self._served_by: str | None = None
        self.register_buffer("format_version", torch.tensor([self.FORMAT_VERSION], dtype=torch.int32,
                                                            device=device))

    @property
    def where(self) -> str:
        return f"{type(self).__name__}" + (f" {self.layer_name!r}" if self.layer_name else "")

    def _apply(self, fn, recurse=True):
        keep = {k: self._buffers[k] for k in self.FIXED_DTYPE_BUFFERS if self._buffers.get(k) is not None}
        super()._apply(fn, recurse)
        for k, before in keep.items():
            after = self._buffers[k]
            if after.dtype != before.dtype:  # converted: redo as a pure move from the original
                self._buffers[k] = before.to(device=after.device)
        self.prepare()
        return self

    # ------------------------------------------------------------ prepared layouts, runners
    def op_args(self) -> tuple:
        """The op's arguments after x, from this layer's buffers (subclasses)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Make the kernel-specific layouts of this layer's weights for every backend that can
        serve it where the buffers live, and forget the runners. Called after the buffers are
        made, moved or loaded; call it yourself after changing a buffer in place, and before
        capturing a CUDA graph if you did."""
        self._runs.clear()
        self._served_by = None
        if self.OP and all(b.device.type != "meta" for b in self._buffers.values() if b is not None):
            ops.prepare_weights(self.OP, *self.op_args())

    def _bind(self, key: tuple, bind: Callable[[], tuple | None]):
        """The runner for this input layout: bind() -> (runner, lasting, backend) or None; kept when
        lasting. The backend of the last call bound is kept too (served_by)."""
        made = bind()
        if made is None:
            return None
        run, lasting, self._served_by = made
        if lasting:
            if len(self._runs) >= _Runners.LIMIT:
                self._runs.clear()
            self._runs[key] = run
        return run

    def served_by(self) -> str | None:
        """The backend that served the last call this layer decided (None before its first eager
        call, or after prepare(); calls through the dispatcher, e.g. traced ones, decide nothing here)."""
        return self._served_by

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "format_version"
        if key in state_dict:
            got = int(state_dict[key].reshape(-1)[0])
            if got != self.FORMAT_VERSION:
                error_msgs.append(
                    f"{self.where} at {prefix.rstrip('.') or '<root>'}: the state_dict holds format version {got}, "
                    f"this kernelswap reads version {self.FORMAT_VERSION}; swap the float model again with "
                    f"this kernelswap version instead of loading the old file")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self.prepare()  # the buffers were overwritten in place

    def weight_bytes(self) -> int:
        """Bytes of the tensors that stand for the weights (format_version excluded)."""
        return sum(b.numel() * b.element_size() for k, b in self._buffers.items()
                   if b is not None and k != "format_version")

    def prepared_bytes(self) -> int:
        """Bytes of the kernel-specific layouts made from this layer's buffers (prepare()), held on
        the device beside them: what the layer costs in memory is weight_bytes() + this."""
        from ..ops._prepared import prepared_bytes
        return prepared_bytes([b for b in self._buffers.values() if b is not None])

    def recipe_config(self) -> dict:
        """The recipe (kernelswap.recipes) that makes this module from the float layer."""
        raise NotImplementedError


def check_features(where: str, **sizes: int) -> None:
    for name, v in sizes.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")


def check_linear(cls_name: str, linear, name: str | None) -> None:
    """from_float's checks on the source layer, with the fix in the message."""
    where = f"{cls_name}.from_float" + (f" ({name!r})" if name else "")
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{where}: expects an nn.Linear, got {type(linear).__name__}")
    w = linear.weight
    if not w.is_floating_point():
        raise TypeError(f"{where}: the weight is {w.dtype}; only float layers can be swapped")
    if w.device.type == "meta":
        raise ValueError(f"{where}: the weight is on the meta device; load the real weights first")
    if min(w.shape) == 0:
        raise ValueError(f"{where}: the layer has a zero-sized weight {tuple(w.shape)}; nothing to swap")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{where}: the weight holds NaN or Inf; fix the layer (or exclude it with filter=)")


def check_input(module, x: torch.Tensor, k: int) -> None:
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"{module.where}: expected input of shape (..., {k}), got {tuple(x.shape)}")


class LinearModule(KernelswapModule):
    """What the swapped linear layers share: forward(x (..., K)) -> (..., N) through their op,
    with the per-layout runner of kernelswap.ops._runner (module docstring)."""

    in_features: int

    def fill_from(self, linear: nn.Linear, **tensors: torch.Tensor | None):
        """from_float's last step: copy each tensor into the buffer of its name (None: skipped) and
        the float layer's bias into `bias`, then prepare(); returns self."""
        for name, t in tensors.items():
            if t is not None:
                self._buffers[name].copy_(t)
        if linear.bias is not None:
            self._buffers["bias"].copy_(linear.bias.detach())
        self.prepare()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) float -> (..., N) x.dtype
        # _runner.eager_ok(x) written out: this is the one per-call path, a frame costs here
        if type(x) is Tensor and not (x.requires_grad and _grad_enabled()) and not _tracing():
            run = self._runs.get((x.shape, x.stride(), x.dtype, x.device, x.data_ptr() & 15, forced_backend()))
            if run is not None:
                return run(x)
        return self._forward_full(x)

    def _forward_full(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_features)
        op = getattr(ops, self.OP)
        args = self.op_args()
        if not _runner.eager_ok(x):
            return op.overload(x, *args)  # tracing, autograd, fake tensors: through the dispatcher
        key = (x.shape, x.stride(), x.dtype, x.device, x.data_ptr() & 15, forced_backend())
        run = self._bind(key, lambda: _runner.bind_tokens(self.OP, op.check, x, *args))
        return op.overload(x, *args) if run is None else run(x)
