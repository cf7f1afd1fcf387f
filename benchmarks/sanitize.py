"""Every GPU kernel once at small awkward shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize.py
    bash benchmarks/sanitize.sh          # the same, memcheck then racecheck on a subset

Each op runs with each GPU backend forced (cuda = kernelswap._C, triton), at M in {1, 33}
and K, N that are not multiples of any tile, so every masked edge of every kernel is
read and written. The Ampere 2:4 GEMMs (csrc/sm80), which the dispatcher leaves to the
sm_90a ones on an H100, are called directly ("cuda-sm80", N = 96: they need N % 32). A backend that refuses a shape (its `supports` reason) is skipped and
listed; anything else that fails is an error. Autotuning is turned off
(KERNELSWAP_AUTOTUNE=0: each kernel's first config), so the sanitizer sees one launch
per call instead of one per candidate config.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("KERNELSWAP_AUTOTUNE", "0")

import torch  # noqa: E402

from kernelswap import packing  # noqa: E402
from kernelswap.ops import sparse24_cuda, use_backend  # noqa: E402
from kernelswap.ops.backend import backend_status  # noqa: E402

C = torch.ops.kernelswap
DEV = "cuda"


def linear_cases(m: int, k: int, n: int, dtype: torch.dtype):
    """(op name, callable) for every linear op at (m, k, n)."""
    x = torch.randn(m, k, device=DEV, dtype=dtype)
    w = torch.randn(n, k, device=DEV)
    bias = torch.randn(n, device=DEV, dtype=dtype)
    w_q, w_s = packing.quantize_int8(w)
    q4 = packing.quantize_int4(w, 32, symmetric=False)
    q4s = packing.quantize_int4(w, 128, symmetric=True)
    sp = packing.prune_24(w)
    sp_vals, sp_meta = packing.compress_24(sp.to(dtype))
    spq, spq_s = packing.quantize_int8(sp)
    spq_vals, spq_meta = packing.compress_24(spq)
    a_q, a_s = C.quantize_per_token_int8(x)
    yield "quantize_per_token_int8", lambda: C.quantize_per_token_int8(x)
    yield "int8_scaled_mm", lambda: C.int8_scaled_mm(a_q, a_s, w_q, w_s, bias, dtype)
    yield "int8_linear", lambda: C.int8_linear(x, w_q, w_s, bias)
    yield "int8_weight_linear", lambda: C.int8_weight_linear(x, w_q, w_s, bias)
    yield "int4_linear g32 asym", lambda: C.int4_linear(x, q4.packed, q4.scales, q4.zeros, 32, bias)
    yield "int4_linear g128 sym", lambda: C.int4_linear(x, q4s.packed, q4s.scales, None, 128, None)
    yield "sparse24_linear", lambda: C.sparse24_linear(x, sp_vals, sp_meta, bias)
    yield "sparse24_int8_linear", lambda: C.sparse24_int8_linear(x, spq_vals, spq_meta, spq_s, bias)


def sm80_cases(m: int, k: int, n: int, dtype: torch.dtype):
    """The Ampere 2:4 GEMMs, called directly (module docstring)."""
    x = torch.randn(m, k, device=DEV, dtype=dtype)
    sp = packing.prune_24(torch.randn(n, k, device=DEV))
    bias = torch.randn(n, device=DEV, dtype=dtype)
    vals, meta = packing.compress_24(sp.to(dtype))
    spq, spq_s = packing.quantize_int8(sp)
    q_vals, q_meta = packing.compress_24(spq)
    yield "sparse24_linear", lambda: sparse24_cuda._sparse24_linear_sm80(x, vals, meta, bias)
    yield "sparse24_int8_linear", lambda: sparse24_cuda._sparse24_int8_linear_sm80(x, q_vals, q_meta, spq_s, bias)


def conv_cases(dtype: torch.dtype):
    def one(n, c_in, hw, c_out, k, stride, groups, act, residual):
        x = torch.randn(n, c_in, hw, hw, device=DEV, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c_out, c_in // groups, k, k, device=DEV, dtype=dtype)
        b = torch.randn(c_out, device=DEV, dtype=dtype)
        pad = k // 2
        ho = (hw + 2 * pad - k) // stride + 1
        r = (torch.randn(n, c_out, ho, ho, device=DEV, dtype=dtype).contiguous(memory_format=torch.channels_last)
             if residual else None)
        return lambda: C.conv_bn_act(x, w, b, [stride] * 2, [pad] * 2, [1, 1], groups, act, r)

    yield "conv_bn_act 3x3 s2", one(2, 24, 13, 40, 3, 2, 1, "relu", False)
    yield "conv_bn_act 1x1 +res", one(3, 40, 7, 24, 1, 1, 1, "hardswish", True)
    yield "conv_bn_act dw3x3", one(2, 48, 11, 48, 3, 1, 48, "relu6", False)
    yield "conv_bn_act grouped", one(1, 64, 9, 64, 3, 1, 2, "silu", False)


def main() -> int:
    torch.manual_seed(0)
    ran, refused, failed = [], [], []
    backends = [b for b in ("cuda", "triton") if backend_status(b)[0]]
    print(f"sanitize: backends {backends} ({', '.join(backend_status(b)[1] for b in backends)})")
    for dtype in (torch.bfloat16, torch.float16):
        cases = [c for m in (1, 33) for c in linear_cases(m, 224, 80, dtype)] + list(conv_cases(dtype))
        runs = [(b, name, fn) for b in backends for name, fn in cases]
        if "cuda" in backends:
            runs += [("cuda-sm80", name, fn) for m in (1, 33) for name, fn in sm80_cases(m, 224, 96, dtype)]
        for backend, name, fn in runs:
            label = f"{backend} {name} {str(dtype)[6:]}"
            try:
                with use_backend(backend if backend in backends else None):
                    fn()
                torch.cuda.synchronize()
                ran.append(label)
            except RuntimeError as e:
                if "no backend can serve this call" in str(e):
                    refused.append(f"{label}: {str(e).split('(', 1)[-1][:140]}")
                else:
                    failed.append(f"{label}: {type(e).__name__}: {str(e)[:300]}")
            except Exception as e:  # noqa: BLE001 - every failure is listed
                failed.append(f"{label}: {type(e).__name__}: {str(e)[:300]}")
    print(f"sanitize: {len(ran)} calls ran, {len(refused)} refused by their backend, {len(failed)} failed")
    for r in refused:
        print("  refused:", r)
    for f in failed:
        print("  FAILED:", f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
