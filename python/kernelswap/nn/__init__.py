"""Drop-in nn.Module replacements that call kernelswap.ops only (the torch.ops.kernelswap ops,
which skip the dispatcher in plain eager calls: kernelswap/ops/_define.py).

Each holds plain tensors as buffers (state_dict round-trips, saves with safetensors)
and a format version; build them with from_float(...) / from_modules(conv, bn, act),
or let kernelswap.swap do it.
"""
from ._base import KernelswapModule
from .conv_bn_act import ConvBNAct2d, activation_name
from .fp8_linear import Fp8Linear
from .int4_linear import Int4Linear
from .int8_linear import Int8Linear
from .sparse24_linear import Sparse24Linear

__all__ = ["ConvBNAct2d", "Fp8Linear", "Int4Linear", "Int8Linear", "KernelswapModule", "Sparse24Linear", "activation_name"]
