"""kernelswap: swap PyTorch layers for faster INT8/INT4/2:4-sparse/fused-conv kernels.

Importing never fails because the CUDA extension or Triton is missing; see
`python -m kernelswap info` for what serves each op on this machine.
"""
from . import _ext

_ext.load()  # registers torch.ops.kernelswap._C_* when the extension is there

from . import ops, packing  # noqa: E402
from .ops import use_backend  # noqa: E402

__version__ = "0.1.0"

__all__ = ["__version__", "ops", "packing", "use_backend"]
