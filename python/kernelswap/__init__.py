"""kernelswap: swap PyTorch layers for faster INT8/INT4/2:4-sparse/fused-conv kernels.

    import kernelswap as ks
    report = ks.swap(model, "int8")          # in place; returns a ks.SwapReport
    ks.save(model, "model.safetensors")      # ks.load(float_model, "model.safetensors")

Importing never fails because the CUDA extension or Triton is missing; see
`python -m kernelswap info` for what serves each op on this machine.
"""
from . import _ext

_ext.load()  # registers torch.ops.kernelswap._C_* when the extension is there

from . import ops, packing  # noqa: E402
from . import nn  # noqa: E402
from .ops import use_backend  # noqa: E402
from .recipes import Fuse, Int4, Int8, Int8Weight, Recipe, Sparse24, Sparse24Int8, register_recipe  # noqa: E402
from .recipes import Fp8, Sparse24Fp8  # noqa: E402
from .serialization import load, save  # noqa: E402
from .compress import DistillReport, PruneReport, distill, prune  # noqa: E402
from .swap import LayerSwap, SwapReport, swap  # noqa: E402
from .capture import capture, prepare  # noqa: E402
from .pipeline import pipeline  # noqa: E402
from .ensemble import Ensemble, ensemble  # noqa: E402
from .evaluate import EvalReport, evaluate  # noqa: E402  (the function; the module stays importable)
from . import parallel  # noqa: E402  (ks.parallel: tensor-parallel styles, kernelswap/parallel/)

from ._version import __version__  # noqa: E402

__all__ = ["Fuse", "Int4", "Int8", "Int8Weight", "LayerSwap", "Recipe", "Sparse24", "Sparse24Int8", "SwapReport",
           "__version__", "load", "nn", "ops", "packing", "register_recipe", "save", "swap", "use_backend"]
__all__ += ["capture", "pipeline", "prepare"]
__all__ += ["EvalReport", "Ensemble", "ensemble", "evaluate"]
__all__ += ["DistillReport", "PruneReport", "distill", "prune"]  # kernelswap.compress
__all__ += ["Fp8", "Sparse24Fp8"]
