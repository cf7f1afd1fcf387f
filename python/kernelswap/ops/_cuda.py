"""What the "cuda" backend's files (int8_cuda.py, sparse24_cuda.py) share: whether this build
and GPU can run the CUTLASS sm_90a or sm_80 GEMMs, the alignment and output-dtype rules of
their entry points, and the fp32 bias their epilogues read.

Each `*_reason` returns why a call cannot be served (None: it can), so the dispatcher
falls back before the extension would raise.
"""
from __future__ import annotations

import functools

import torch

from .. import _ext
from ._prepared import PreparedWeights

# TMA moves rows of 16 bytes: K int8 / bf16 elements per row of x and w, N per row of out.
ALIGN_KN = 16
OUT_DTYPES = (torch.bfloat16, torch.float16)

_BIAS = PreparedWeights("bias -> fp32")


def cutlass_reason(info: dict) -> str | None:
    if info.get("cutlass") != "1":
        return "kernelswap._C was built without CUTLASS (pip install nvidia-cutlass, rebuild)"
    return None


@functools.lru_cache(maxsize=None)
def sm90_reason(device_index: int) -> str | None:
    """Why the sm_90a GEMMs cannot run on this device (None: they can)."""
    info = _ext.build_info()
    if (why := cutlass_reason(info)) is not None:
        return why
    if "9.0a" not in _ext.built_archs(info.get("archs", "")):
        return f"kernelswap._C carries no sm_90a code (built for {info.get('archs')!r}); rebuild with 9.0a"
    major, minor = torch.cuda.get_device_capability(device_index)
    if (major, minor) != (9, 0):
        return f"the CUTLASS GEMMs are sm_90a (Hopper) code; this GPU is sm_{major}{minor}"
    return None


def device_index(x: torch.Tensor) -> int:
    return x.device.index if x.device.index is not None else torch.cuda.current_device()


def aligned(*tensors: torch.Tensor) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def gemm_reason(x: torch.Tensor, k: int, n: int, *tensors: torch.Tensor) -> str | None:
    # Shape rules first: they need no GPU, so the CPU tests can check them.
    if k % ALIGN_KN or n % ALIGN_KN:
        return f"K={k} and N={n} must be multiples of {ALIGN_KN} (TMA moves 16-byte rows)"
    if not aligned(x, *tensors):
        return "an input is not 16-byte aligned (an offset view); TMA needs aligned rows"
    return sm90_reason(device_index(x))


def out_reason(dtype: torch.dtype) -> str | None:
    if dtype not in OUT_DTYPES:
        return f"output {dtype} is not instantiated (bfloat16 / float16 only)"
    return None


def bias32(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The fp32 bias the epilogue reads (converted once per bias buffer)."""
    if bias is None or (bias.dtype == torch.float32 and bias.is_contiguous() and aligned(bias)):
        return bias
    return _BIAS.get((bias,), lambda: bias.float().contiguous())


def sm80_code_reason(device_index: int, what: str) -> str | None:
    """Why sm_80+ code (`what`, e.g. "mma.sp") cannot run on this device: an older GPU, or a
    build that carries no code for it (None: it can)."""
    major, minor = torch.cuda.get_device_capability(device_index)
    if major < 8:
        return f"{what} needs an sm_80 or later GPU; this one is sm_{major}{minor}"
    archs = _ext.build_info().get("archs", "")
    if not _ext.runs_here(archs, major, minor):
        return f"kernelswap._C carries no code for sm_{major}{minor} (built for {archs!r})"
    return None


@functools.lru_cache(maxsize=None)
def sm80_reason(device_index: int) -> str | None:
    """Why the Ampere 2:4 GEMMs should not serve this device (None: they should)."""
    if (why := cutlass_reason(_ext.build_info()) or sm80_code_reason(device_index, "mma.sp")) is not None:
        return why
    if sm90_reason(device_index) is None:
        return "the sm_90a 2:4 GEMM serves this GPU"
    return None
