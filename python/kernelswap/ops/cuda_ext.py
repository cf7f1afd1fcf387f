"""Implementations served by the CUDA extension kernelswap._C ("cuda" backend).

  quantize_per_token_int8  _C_quantize_per_token_int8 (any CUDA GPU)
  int8_scaled_mm           _C_int8_mm: CUTLASS Hopper int8 GEMM, fused scale/bias epilogue
  int8_linear              _C_quantize_per_token_int8 + _C_int8_mm
  sparse24_linear          _C_sparse24_mm: CUTLASS Hopper 2:4 sparse GEMM (sparse wgmma)
  sparse24_int8_linear     _C_quantize_per_token_int8 + _C_sparse24_int8_mm
  sparse24_linear          _C_sparse24_mm_sm80: CUTLASS Ampere 2:4 GEMM (mma.sp), sm_80 / 86 / 89
  sparse24_int8_linear     _C_quantize_per_token_int8 + _C_sparse24_int8_mm_sm80

The first five GEMMs are sm_90a code (csrc/sm90); the two *_sm80 ones (csrc/sm80) run on
any GPU from sm_80 and serve the 2:4 ops where the sm_90a ones cannot (an Ampere or Ada
GPU, or a build without 9.0a). Each `supports` predicate returns why a call cannot be
served (GPU, build, dtype, shape, alignment) so the dispatcher falls back before the
extension would raise. Sparse weights are converted once per weight buffer from the
public format (kernelswap.ops.sparse24) to each kernel's layout (_C_sparse24_prepare for
sm_90a, kernelswap.ops.sparse24_sm80 for sm_80) and kept in a PreparedWeights cache.
"""
from __future__ import annotations

import functools

import torch

from .. import _ext
from . import sparse24_sm80
from ._prepared import PreparedWeights
from .backend import Preference, register
from .sparse24 import check_meta_valid, decompress_24_ref

# TMA moves rows of 16 bytes: K int8 / bf16 elements per row of x and w, N per row of out.
ALIGN_KN = 16
# int8 2:4: the compressed values (K / 2 per row) must fill 16-byte rows too (CUTLASS's
# sparse mainloop refuses K = 16 or 208 on the H100).
ALIGN_K_SPARSE_INT8 = 32
_OUT_DTYPES = (torch.bfloat16, torch.float16)

_SPARSE = PreparedWeights("sparse24 -> CUTLASS sm90 layout")
_SPARSE_SM80 = PreparedWeights("sparse24 -> CUTLASS sm80 layout")
_BIAS = PreparedWeights("bias -> fp32")


@register("quantize_per_token_int8", "cuda")
def _quantize_cuda(x):
    return torch.ops.kernelswap._C_quantize_per_token_int8(x)


# ---------------------------------------------------------------- shared checks
def _arch_entries(arch_list: str) -> list[tuple[str, bool]]:
    """TORCH_CUDA_ARCH_LIST as built ("8.0;8.9;9.0a+PTX", or space-separated) -> [(arch, with PTX)]."""
    return [(e.split("+")[0].strip(), "+PTX" in e) for e in arch_list.replace(" ", ";").split(";") if e.strip()]


def built_archs(arch_list: str) -> set[str]:
    """TORCH_CUDA_ARCH_LIST as built -> {"8.0", "8.9", "9.0a"}."""
    return {arch for arch, _ in _arch_entries(arch_list)}


def _cutlass_reason(info: dict) -> str | None:
    if info.get("cutlass") != "1":
        return "kernelswap._C was built without CUTLASS (pip install nvidia-cutlass, rebuild)"
    return None


@functools.lru_cache(maxsize=None)
def _sm90_reason(device_index: int) -> str | None:
    """Why the sm_90a GEMMs cannot run on this device (None: they can)."""
    info = _ext.build_info()
    if (why := _cutlass_reason(info)) is not None:
        return why
    if "9.0a" not in built_archs(info.get("archs", "")):
        return f"kernelswap._C carries no sm_90a code (built for {info.get('archs')!r}); rebuild with 9.0a"
    major, minor = torch.cuda.get_device_capability(device_index)
    if (major, minor) != (9, 0):
        return f"the CUTLASS GEMMs are sm_90a (Hopper) code; this GPU is sm_{major}{minor}"
    return None


def _device_index(x: torch.Tensor) -> int:
    return x.device.index if x.device.index is not None else torch.cuda.current_device()


def _aligned(*tensors: torch.Tensor) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def _gemm_reason(x: torch.Tensor, k: int, n: int, *tensors: torch.Tensor) -> str | None:
    # Shape rules first: they need no GPU, so the CPU tests can check them.
    if k % ALIGN_KN or n % ALIGN_KN:
        return f"K={k} and N={n} must be multiples of {ALIGN_KN} (TMA moves 16-byte rows)"
    if not _aligned(x, *tensors):
        return "an input is not 16-byte aligned (an offset view); TMA needs aligned rows"
    return _sm90_reason(_device_index(x))


def _out_reason(dtype: torch.dtype) -> str | None:
    if dtype not in _OUT_DTYPES:
        return f"output {dtype} is not instantiated (bfloat16 / float16 only)"
    return None


def _bias32(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The fp32 bias the epilogue reads (converted once per bias buffer)."""
    if bias is None or (bias.dtype == torch.float32 and bias.is_contiguous() and _aligned(bias)):
        return bias
    return _BIAS.get((bias,), lambda: bias.float().contiguous())


# ---------------------------------------------------------------- int8 dense
def _scaled_mm_supports(a, a_scale, b, b_scale, bias, out_dtype):
    return _out_reason(out_dtype) or _gemm_reason(a, a.shape[1], b.shape[0], b, a_scale, b_scale)


@register("int8_scaled_mm", "cuda", supports=_scaled_mm_supports)
def _int8_scaled_mm_cuda(a, a_scale, b, b_scale, bias, out_dtype):
    return torch.ops.kernelswap._C_int8_mm(a, a_scale, b, b_scale, _bias32(bias), out_dtype)


def _int8_linear_supports(x, w_q, w_scale, bias):
    return _out_reason(x.dtype) or _gemm_reason(x, x.shape[1], w_q.shape[0], w_q, w_scale)


@register("int8_linear", "cuda", supports=_int8_linear_supports)
def _int8_linear_cuda(x, w_q, w_scale, bias):
    q, s = torch.ops.kernelswap._C_quantize_per_token_int8(x)
    return torch.ops.kernelswap._C_int8_mm(q, s, w_q, w_scale, _bias32(bias), x.dtype)


# ---------------------------------------------------------------- 2:4 sparse
def _prepared(op: str, values: torch.Tensor, meta: torch.Tensor, k: int):
    """(values, meta) in CUTLASS's layout, made once per weight buffer: check the
    metadata, decompress to dense on the GPU, run CUTLASS's compressor."""
    def make():
        check_meta_valid(op, meta)
        dense = decompress_24_ref(values, meta)[:, :k].contiguous()
        return torch.ops.kernelswap._C_sparse24_prepare(dense)
    return _SPARSE.get((values, meta), make)


def _sparse_reason(x, values, meta, *read_directly: torch.Tensor) -> str | None:
    # values and meta are not read by the GEMM (their prepared copies are), so only x and
    # `read_directly` (w_scale) must be aligned.
    k, n = x.shape[1], values.shape[0]
    if values.shape[1] * 2 != k:
        return f"x has K={k} but values hold Kp={values.shape[1] * 2} (padded K); the kernel needs K = Kp"
    return _gemm_reason(x, k, n, *read_directly)


# At M <= this, the Triton 2:4 GEMV (read values + metadata, expand in registers) beat the
# CUTLASS sparse GEMM on the H100 (bf16, 8192x28672: 113 vs 150 us at M = 1, 129 vs 139 us at
# M = 16; benchmarks/results/bench.csv). The int8 2:4 GEMM stays faster there (84.6 vs 131 us).
SPARSE24_TRITON_UP_TO_M = 16


def _sparse24_supports(x, values, meta, bias):
    if x.dtype not in _OUT_DTYPES:
        return f"x is {x.dtype}; the sparse tensor cores take bfloat16 / float16"
    if values.dtype != x.dtype:
        return f"values are {values.dtype} but x is {x.dtype}; the tensor cores multiply one dtype"
    why = _sparse_reason(x, values, meta)
    if why is None and x.shape[0] <= SPARSE24_TRITON_UP_TO_M:
        return Preference(f"M={x.shape[0]} <= {SPARSE24_TRITON_UP_TO_M}: the Triton 2:4 GEMV is faster here")
    return why


@register("sparse24_linear", "cuda", supports=_sparse24_supports)
def _sparse24_linear_cuda(x, values, meta, bias):
    v, e = _prepared("sparse24_linear", values, meta, x.shape[1])
    return torch.ops.kernelswap._C_sparse24_mm(x, v, e, _bias32(bias))


def _sparse24_int8_supports(x, values, meta, w_scale, bias):
    if x.shape[1] % ALIGN_K_SPARSE_INT8:
        return (f"K={x.shape[1]} is not a multiple of {ALIGN_K_SPARSE_INT8}: the int8 2:4 GEMM reads 16-byte "
                f"rows of K/2 compressed values")
    return _out_reason(x.dtype) or _sparse_reason(x, values, meta, w_scale)


@register("sparse24_int8_linear", "cuda", supports=_sparse24_int8_supports)
def _sparse24_int8_linear_cuda(x, values, meta, w_scale, bias):
    v, e = _prepared("sparse24_int8_linear", values, meta, x.shape[1])
    q, s = torch.ops.kernelswap._C_quantize_per_token_int8(x)
    return torch.ops.kernelswap._C_sparse24_int8_mm(q, s, v, e, w_scale, _bias32(bias), x.dtype)


# ---------------------------------------------------------------- 2:4 sparse, sm_80+ (mma.sp)
def runs_here(arch_list: str, major: int, minor: int) -> bool:
    """Does a build for `arch_list` carry code a GPU of compute capability major.minor runs?
    SASS runs on its own major at an equal or higher minor ("9.0a" only on 9.0); "+PTX" is
    JIT-compiled for any later GPU."""
    for arch, ptx in _arch_entries(arch_list):
        a_major, a_minor = int(arch.split(".")[0]), int(arch.split(".")[1].rstrip("a"))
        if arch.endswith("a"):
            sass = (a_major, a_minor) == (major, minor)
        else:
            sass = a_major == major and a_minor <= minor
        if sass or (ptx and (a_major, a_minor) <= (major, minor)):
            return True
    return False


@functools.lru_cache(maxsize=None)
def _sm80_reason(device_index: int) -> str | None:
    """Why the Ampere 2:4 GEMMs should not serve this device (None: they should)."""
    info = _ext.build_info()
    if (why := _cutlass_reason(info)) is not None:
        return why
    major, minor = torch.cuda.get_device_capability(device_index)
    if major < 8:
        return f"mma.sp needs an sm_80 or later GPU; this one is sm_{major}{minor}"
    if not runs_here(info.get("archs", ""), major, minor):
        return f"kernelswap._C carries no code for sm_{major}{minor} (built for {info.get('archs')!r})"
    if _sm90_reason(device_index) is None:
        return "the sm_90a 2:4 GEMM serves this GPU"
    return None


def _sm80_shape_reason(x, values) -> str | None:
    n, rows = values.shape[0], sparse24_sm80.row_block(values.dtype)
    if n % rows:
        return f"N={n} is not a multiple of {rows} (the Ampere GEMM's metadata row groups)"
    if not _aligned(x):
        return "x is not 16-byte aligned (an offset view); the Ampere GEMM reads 16-byte vectors"
    return None


def _prepared_sm80(op: str, values: torch.Tensor, meta: torch.Tensor):
    """(values, meta) in the Ampere GEMM's layout, made once per weight buffer."""
    def make():
        check_meta_valid(op, meta)
        return sparse24_sm80.prepare(values, meta)
    return _SPARSE_SM80.get((values, meta), make)


def _sparse24_sm80_supports(x, values, meta, bias):
    if x.dtype not in _OUT_DTYPES:
        return f"x is {x.dtype}; the sparse tensor cores take bfloat16 / float16"
    if values.dtype != x.dtype:
        return f"values are {values.dtype} but x is {x.dtype}; the tensor cores multiply one dtype"
    return _sm80_shape_reason(x, values) or _sm80_reason(_device_index(x))


@register("sparse24_linear", "cuda", supports=_sparse24_sm80_supports)
def _sparse24_linear_sm80(x, values, meta, bias):
    v, e = _prepared_sm80("sparse24_linear", values, meta)
    return torch.ops.kernelswap._C_sparse24_mm_sm80(x, v, e, _bias32(bias))


def _sparse24_int8_sm80_supports(x, values, meta, w_scale, bias):
    return (_out_reason(x.dtype) or _sm80_shape_reason(x, values)
            or (None if _aligned(w_scale) else "w_scale is not 16-byte aligned")
            or _sm80_reason(_device_index(x)))


@register("sparse24_int8_linear", "cuda", supports=_sparse24_int8_sm80_supports)
def _sparse24_int8_linear_sm80(x, values, meta, w_scale, bias):
    v, e = _prepared_sm80("sparse24_int8_linear", values, meta)
    q, s = torch.ops.kernelswap._C_quantize_per_token_int8(x)
    return torch.ops.kernelswap._C_sparse24_int8_mm_sm80(q, s, v, e, w_scale, _bias32(bias), x.dtype)
