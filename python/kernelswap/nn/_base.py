"""What every kernelswap module shares: a format version, fixed-dtype buffers, checks.

Swapped modules keep plain tensors as buffers (no Parameters: they are inference
only), so `state_dict()` round-trips, loads on a CPU-only machine and saves with
safetensors. Each module class carries FORMAT_VERSION, stored in its state_dict as
the int32 buffer `format_version`; loading a state_dict written by another version is
an error that names the layer, instead of silently misreading packed weights.
"""
from __future__ import annotations

import torch
from torch import nn


class KernelswapModule(nn.Module):
    FORMAT_VERSION = 1
    # Buffers whose dtype is part of the op's weight format (e.g. int4 scales are fp16):
    # model.half() / .bfloat16() / .float() must not convert them, only move them.
    FIXED_DTYPE_BUFFERS: tuple[str, ...] = ()

    def __init__(self, name: str | None = None, device=None):
        super().__init__()
        self.layer_name = name  # for error messages; not part of the state
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
        return self

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

    def weight_bytes(self) -> int:
        """Bytes of the tensors that stand for the weights (format_version excluded)."""
        return sum(b.numel() * b.element_size() for k, b in self._buffers.items()
                   if b is not None and k != "format_version")

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
