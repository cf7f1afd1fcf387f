"""tinygemm (torch._weight_int4pack_mm) serving int4_linear at small M: bf16 on CUDA sm_80+.

At M = 1..8 tinygemm reads the int4 weight faster than our Triton GEMV / split-K kernels
(numbers beside TINYGEMM_M_MAX), so the dispatcher sends those calls here, except those
the "cuda" backend's decode GEMV takes first (M <= gemv_cuda.GEMV_UP_TO_M, where the
extension carries it; ops/gemv_cuda.py). Registered by kernelswap.ops.int4 as a
"torch"-backend implementation, ahead of dequantize + cuBLAS.

Format mapping (checked against aten/src/ATen/native/cuda/int4mm.cu and torch's own
_group_quantize_tensor test helper):
  * _convert_weight_to_int4pack takes (N, K / 2) uint8 with even k in the HIGH nibble
    (ours: low nibble), so the nibbles are swapped before packing; inner_k_tiles is the
    widest of 8 / 4 / 2 that divides Kp / 16.
  * tinygemm dequantizes w = (q - 8) * scale + zero from scales_and_zeros (Kp / g, N, 2);
    ours is (q - z) * s = (q - 8) * s + (8 - z) * s, so zero = (8 - z) * s (0 when
    symmetric). Both are rounded to bf16 here: the fp16 scale loses 3 mantissa bits
    (relative error <= 2**-9, the size of one bf16 rounding of the weight, so the result
    stays within the baseline-relative tolerance; see tests/test_int4_dispatch.py).
  * The kernel reads K off x and needs K % group == 0: x is zero-padded to Kp, so the
    padding columns contribute exactly 0 whatever their dequantized value.
The converted weight (same bytes as ours, plus (Kp / g, N, 2) bf16) is made once per
weight buffer through PreparedWeights (by `prepare`, when the layer's buffers are made,
moved or loaded) and kept while the buffer lives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._prepared import PreparedWeights
from . import gemv_cuda
from .backend import Transient, forced_backend

TINYGEMM_GROUPS = (32, 64, 128, 256)  # the group sizes int4mm.cu instantiates
TINYGEMM_OFFSET = 8  # tinygemm subtracts 8 from every code
N_TILE = 8  # tinygemm's n tile: scales_and_zeros must have ceil(N / 8) * 8 columns
# Largest M tinygemm serves. H100, bf16, g128 asym (benchmarks/int4_triton_quick.py), us:
#   M x K x N            tinygemm  triton gemv  triton gemm_small  cuBLAS bf16
#   1 x 4096 x 14336        25.6       84.6            -               54.7
#   4 x 4096 x 14336        28.4      216.4           47.4             54.3
#   8 x 4096 x 14336        43.3        -             46.1             54.2
#  16 x 4096 x 14336        70.8        -            110.0 (68.3 in an earlier run)  54.3
#  16 x 8192 x 28672       261.4        -            127.9            179.9
#   1 x 8192 x 28672        70.6      302.2            -              178.7
# ("tinygemm" here is this module's path, PreparedWeights lookup and x padding included.)
TINYGEMM_M_MAX = 8
# The torch version test is a string parse: done once, not per call.
_TORCH_OK = torch.__version__ >= "2.11" and hasattr(torch, "_weight_int4pack_mm")

_PREPARED = PreparedWeights("int4_tinygemm")


def inner_k_tiles(kp: int) -> int | None:
    """Widest k-tile packing (8 / 4 / 2 tiles of 16) that divides Kp, None if none does."""
    return next((t for t in (8, 4, 2) if kp % (t * 16) == 0), None)


def tinygemm_codes(w_packed: Tensor) -> Tensor:
    """Ours (even k in the low nibble) -> tinygemm's uint8 input (even k in the high nibble)."""
    return ((w_packed & 0x0F) << 4 | w_packed >> 4).contiguous()


def tinygemm_scales_and_zeros(scales: Tensor, zeros: Tensor | None) -> Tensor:
    """(N, G) fp16 scales, (N, G) uint8 zeros or None -> (G, N, 2) bf16 with
    (q - 8) * scale + zero == (q - z) * s up to the bf16 rounding of scale and zero."""
    s = scales.float()
    zero = torch.zeros_like(s) if zeros is None else (TINYGEMM_OFFSET - zeros.float()) * s  # exact in fp32
    return torch.stack((s, zero), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def _usable(x, w_packed, group_size) -> str | None:
    """Why tinygemm cannot run this call at all (None: it can)."""
    if x.device.type != "cuda":
        return "tinygemm runs on CUDA only"
    if x.dtype != torch.bfloat16:
        return f"tinygemm takes bf16 activations only, got {x.dtype}"
    return _usable_weights(w_packed, group_size)


def _usable_weights(w_packed, group_size) -> str | None:
    """Why tinygemm cannot take these (CUDA) weights (None: it can)."""
    if group_size not in TINYGEMM_GROUPS:
        return f"tinygemm has no group size {group_size} (it has {TINYGEMM_GROUPS})"
    n, kp = w_packed.shape[0], w_packed.shape[1] * 2
    if n % N_TILE:
        return f"N={n} is not a multiple of tinygemm's n tile {N_TILE}"
    if inner_k_tiles(kp) is None:
        return f"Kp={kp} is not a multiple of 32 (tinygemm's smallest k packing)"
    if not _TORCH_OK:
        return f"torch {torch.__version__}: the uint8 tinygemm layout is tested on torch >= 2.11 only"
    if torch.cuda.get_device_capability(w_packed.device) < (8, 0):
        return "tinygemm needs sm_80 or later"
    return None


def supports(x, w_packed, scales, zeros, group_size, bias) -> str | None:
    """None where tinygemm is the fastest path (1 <= M <= TINYGEMM_M_MAX and usable)."""
    m = x.shape[0]
    if not 1 <= m <= TINYGEMM_M_MAX:
        return f"M={m} outside tinygemm's range 1..{TINYGEMM_M_MAX}"
    why = _usable(x, w_packed, group_size)
    if why is None and not _PREPARED.holds(tuple(t for t in (w_packed, scales, zeros) if t is not None)) and \
            torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing():
        # prepare() leaves the layout out where the GEMV serves; made here it would sit in the graph's pool.
        return Transient("capturing, and the tinygemm layout was not prepared (the W4A16 GEMV serves these "
                         "weights; use_backend('torch') around kernelswap.prepare(model) makes it)")
    return why


def prepare(w_packed, scales, zeros, group_size, bias) -> None:
    """Make the tinygemm layout of these weights where tinygemm can serve them (register's prepare),
    unless the CUDA extension's W4A16 GEMV, tried first, serves every M tinygemm would on this GPU:
    then the layout would be a copy of the weight that only a K % 8 != 0 call (which the GEMV declines)
    could read; such a call makes it on its first eager use, and inside CUDA-graph capture leaves
    it to the next backend (supports). Forcing the torch backend (`use_backend("torch")` around the
    move or `ks.prepare`, or KERNELSWAP_BACKEND=torch) makes it here."""
    if not w_packed.is_cuda or _usable_weights(w_packed, group_size) is not None:
        return
    if forced_backend() != "torch" and gemv_cuda.int4_serves_up_to(w_packed) >= TINYGEMM_M_MAX:
        return
    sources = tuple(t for t in (w_packed, scales, zeros) if t is not None)
    _PREPARED.get(sources, lambda: _prepare(w_packed, scales, zeros))


def _prepare(w_packed: Tensor, scales: Tensor, zeros: Tensor | None) -> tuple[Tensor, Tensor]:
    kp = w_packed.shape[1] * 2
    w_tg = torch._convert_weight_to_int4pack(tinygemm_codes(w_packed), inner_k_tiles(kp))
    return w_tg, tinygemm_scales_and_zeros(scales, zeros)


def tinygemm_bind(w_packed, scales, zeros, group_size, bias):
    """tinygemm_linear as a function of x alone: the converted weight, padding and bias looked up once."""
    sources = tuple(t for t in (w_packed, scales, zeros) if t is not None)
    w_tg, sz = _PREPARED.get(sources, lambda: _prepare(w_packed, scales, zeros))
    kp, mm = w_packed.shape[1] * 2, torch.ops.aten._weight_int4pack_mm.default
    b = None if bias is None else bias.to(torch.bfloat16)

    def run(x):
        x = F.pad(x, (0, kp - x.shape[1])) if x.shape[1] != kp else x
        out = mm(x, w_tg, group_size, sz)
        return out if b is None else out.add_(b)  # tinygemm has no bias epilogue: one more bf16 rounding
    return run


def tinygemm_linear(x, w_packed, scales, zeros, group_size, bias):
    """x (M, K) bf16 -> (M, N) bf16 through torch._weight_int4pack_mm (see the module docstring)."""
    return tinygemm_bind(w_packed, scales, zeros, group_size, bias)(x.contiguous())
