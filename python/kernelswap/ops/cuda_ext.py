"""Implementations served by the CUDA extension kernelswap._C ("cuda" backend)."""
import torch

from .backend import register


@register("quantize_per_token_int8", "cuda")
def _quantize_cuda(x):
    return torch.ops.kernelswap._C_quantize_per_token_int8(x)
