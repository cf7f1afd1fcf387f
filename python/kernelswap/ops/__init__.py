"""kernelswap's ops: each defined once with torch.library (schema + fake + reference).

Call them as torch.ops.kernelswap.<name> or through the functions below. The backend
that serves a call is chosen from its argument layout and remembered for that layout
(kernelswap.ops.backend); the swapped layers keep one runner per input layout instead
(kernelswap.ops._runner).
"""
from . import backend
from .backend import BACKENDS, forced_backend, prepare_weights, use_backend
from .activations import ACTIVATIONS, activation_name, apply_activation
from .conv import conv_bn_act
from .fp8 import fp8_linear, quantize_per_token_fp8, sparse24_fp8_linear
from .int4 import GROUP_SIZES, int4_linear
from .int8 import int8_linear, int8_scaled_mm, int8_weight_linear, quantize_per_token_int8
from .sparse24 import sparse24_int8_linear, sparse24_linear

# Fast paths, registered after the references; each imports its kernels lazily.
from . import gemv_cuda  # noqa: F401,E402 - before int8_cuda, so its decode GEMVs are tried first
from . import mixed_cuda  # noqa: F401,E402 - after the GEMVs: the weight-only layers' large-M GEMMs
from . import conv_torch, conv_triton, int4_triton, int8_cuda, int8_triton, sparse24_cslt, sparse24_cuda, sparse24_triton  # noqa: F401,E402
from . import fp8_cuda  # noqa: F401,E402

PUBLIC_OPS = (
    "quantize_per_token_int8",
    "int8_scaled_mm",
    "int8_linear",
    "int8_weight_linear",
    "int4_linear",
    "sparse24_linear",
    "sparse24_int8_linear",
    "conv_bn_act",
    "quantize_per_token_fp8",
    "fp8_linear",
    "sparse24_fp8_linear",
)

__all__ = [
    "ACTIVATIONS", "BACKENDS", "GROUP_SIZES", "PUBLIC_OPS", "activation_name", "apply_activation", "backend",
    "conv_bn_act", "forced_backend", "fp8_linear", "int4_linear", "int8_linear", "int8_scaled_mm",
    "int8_weight_linear", "prepare_weights", "quantize_per_token_fp8", "quantize_per_token_int8",
    "sparse24_fp8_linear", "sparse24_int8_linear", "sparse24_linear", "use_backend",
]
