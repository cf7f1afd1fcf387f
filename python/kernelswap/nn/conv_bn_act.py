"""ConvBNAct2d: Conv2d with its BatchNorm folded in, plus an optional fused residual
add and activation, in one op (ops.conv_bn_act):

  out = act(conv2d(x, weight) + bias + residual)

Buffers: weight (C_out, C_in // groups, kH, kW) and bias (C_out,), BN already folded
(kernelswap.packing.fold_bn, in float64); both follow .half() etc. The weight keeps the memory
format of the conv weight it was made from (and follows .to(memory_format=...)).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.activations import ACTIVATIONS, activation_name, apply_activation
from ..ops.conv import output_shape
from ..packing import fold_bn
from .. import ops
from ..ops import _runner
from ..ops.backend import forced_backend
from ._base import KernelswapModule, check_features

def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Explicit (pH, pW) of a Conv2d, resolving padding='valid'/'same'; ValueError when impossible."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even effective kernel pads asymmetrically; "
                             "give explicit padding")
        return total[0] // 2, total[1] // 2
    return _pair(conv.padding)


class ConvBNAct2d(KernelswapModule):
    OP = "conv_bn_act"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, activation: str = "identity", *, device=None,
                 dtype: torch.dtype = torch.float32, name: str | None = None):
        super().__init__(name, device)
        check_features(self.where, in_channels=in_channels, out_channels=out_channels, groups=groups)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.where}: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{self.where}: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0 or min(self.kernel_size) < 1:
            raise ValueError(f"{self.where}: need kernel_size, stride, dilation >= 1 and padding >= 0, got "
                             f"{self.kernel_size}, {self.stride}, {self.dilation}, {self.padding}")
        self.activation = activation
        self.register_buffer("weight", torch.zeros(out_channels, in_channels // groups, *self.kernel_size,
                                                   dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_channels, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, act=None,
                     name: str | None = None) -> "ConvBNAct2d":
        """conv -> bn (optional) -> act (a module, function or name; None: identity)."""
        where = f"{cls.__name__}.from_modules" + (f" ({name!r})" if name else "")
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{where}: expects an nn.Conv2d, got {type(conv).__name__}")
        if not conv.weight.is_floating_point():
            raise TypeError(f"{where}: the conv weight is {conv.weight.dtype}; only float layers can be fused")
        try:
            padding = conv_padding(conv)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        activation = activation_name(act)
        if activation is None:
            raise ValueError(f"{where}: cannot fuse activation {act!r}; fusable: {ACTIVATIONS}")
        w = conv.weight.detach()
        b = None if conv.bias is None else conv.bias.detach()
        if bn is not None:
            if not isinstance(bn, nn.BatchNorm2d):
                raise TypeError(f"{where}: expects an nn.BatchNorm2d, got {type(bn).__name__}")
            if bn.training:
                raise ValueError(f"{where}: the BatchNorm is in training mode; call model.eval() before fusing")
            try:
                w, b = fold_bn(w, b, bn)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if not bool(torch.isfinite(w).all()) or (b is not None and not bool(torch.isfinite(b).all())):
            raise ValueError(f"{where}: the folded weight holds NaN or Inf (check the BatchNorm's running_var)")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                conv.groups, b is not None, activation, device=w.device, dtype=w.dtype, name=name)
        # The conv weight's own strides: a model already in channels_last keeps a channels_last weight,
        # which cuDNN takes as it is; an NCHW copy of it would be converted on every call.
        m.weight = torch.empty_like(w)
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
        m.prepare()
        return m

    def op_args(self) -> tuple:
        b = self._buffers
        return b["weight"], b["bias"], list(self.stride), list(self.padding), list(self.dilation), self.groups

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """x (N, C_in, H, W) [, residual (N, C_out, H_out, W_out)] -> (N, C_out, H_out, W_out) x.dtype.
        Per input layout the call is decided once (kernelswap.nn._base's docstring)."""
        if _runner.eager_ok(x) and (residual is None or _runner.eager_ok(residual)):
            run = self._runs.get(self._key(x, residual))
            if run is not None:
                return run(x, residual)
        return self._forward_full(x, residual)

    @staticmethod
    def _key(x: Tensor, residual: Tensor | None) -> tuple:
        # 16-byte alignment is part of the layout: a replayed Triton launch was compiled for it
        res = None if residual is None else (residual.shape, residual.stride(), residual.dtype, residual.device,
                                             residual.data_ptr() & 15)
        return x.shape, x.stride(), x.dtype, x.device, x.data_ptr() & 15, forced_backend(), res

    def _forward_full(self, x: Tensor, residual: Tensor | None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.where}: expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        op = ops.conv_bn_act
        w_args = self.op_args()
        if residual is not None and residual.shape != output_shape(x, self.weight, self.stride, self.padding,
                                                                     self.dilation):
            # A broadcasting add (found by tracing, shapes unknown then): keep the add outside the op.
            return apply_activation(op(x, *w_args, "identity", None) + residual, self.activation)
        args = (x, *w_args, self.activation, residual)
        if not (_runner.eager_ok(x) and (residual is None or _runner.eager_ok(residual))):
            return op.overload(*args)  # tracing, autograd, fake tensors: through the dispatcher
        run = self._bind(self._key(x, residual), lambda: _runner.bind_plain(self.OP, op.check, args))
        return op.overload(*args) if run is None else run(x, residual)

    def recipe_config(self) -> dict:
        return {"recipe": "fuse"}

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}, activation={self.activation!r} (BN folded)"
