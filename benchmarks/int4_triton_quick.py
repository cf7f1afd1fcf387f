"""Quick W4A16 timing: our Triton kernels vs cuBLAS bf16, tinygemm and dequantize + cuBLAS.

    python3 benchmarks/int4_triton_quick.py [OUT_DIR]

GPU session (one call): python3 -m pip install --no-build-isolation --no-deps -e . (use
python3 -m pip: a bare `pip` installed kernelswap where `python` did not see it), then
python3 -m pytest -q tests/test_int4_triton.py, then this script; ~50 kernel compilations
in all, about half of them shared between the two.

Shapes are M x K x N (weight N x K), group 128, asymmetric, bf16 activations: the
TARGETS.md rows P3 / P4 / P5 and M = 1 / 4 / 16 / 128 / 4096 on 4096 x 14336. Every
provider is timed in the same process with triton.testing.do_bench (CUDA events, L2
flushed before each call, median with p20 / p80). Writes int4_triton_quick.csv (long
format, tagged with GPU, versions, commit, date) and prints a table last.
"""
from __future__ import annotations

import csv
import datetime
import os
import sys

import torch
import torch.nn.functional as F
import triton

from kernelswap.kernels import w4a16_gemm as gemm_mod
from kernelswap.kernels import w4a16_gemv as gemv_mod
from kernelswap.ops import use_backend
from kernelswap.ops.int4 import dequantize_int4_ref, unpack_int4
from kernelswap.packing import quantize_int4

GROUP = 128
SHAPES = [  # (tag, M, K, N)
    ("P3", 1, 8192, 28672), ("P4", 16, 8192, 28672), ("P5", 4096, 8192, 8192),
    ("", 1, 4096, 14336), ("", 4, 4096, 14336), ("", 16, 4096, 14336), ("", 128, 4096, 14336),
    ("", 4096, 4096, 14336),
]


def tinygemm_operands(q, n, k):
    """Our format -> torch._weight_int4pack_mm's: codes with even k in the HIGH nibble,
    and w = (c - 8) * s + zero_f with zero_f = (8 - z) * s, as (K / g, N, 2) bf16."""
    codes = unpack_int4(q.packed)[:, :k]
    packed = (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8)
    w_tiny = torch._convert_weight_to_int4pack(packed.contiguous(), 8)
    s = q.scales.float()
    zero_f = (8.0 - q.zeros.float()) * s
    sz = torch.stack([s, zero_f], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return w_tiny, sz


def providers(m, k, n, x, q):
    ws, sc, z = q.packed, q.scales, q.zeros
    w_bf16 = dequantize_int4_ref(ws, sc, z, GROUP)[:, :k].to(torch.bfloat16)
    out = {"cublas_bf16": lambda: F.linear(x, w_bf16)}
    w_tiny, sz = tinygemm_operands(q, n, k)
    out["tinygemm"] = lambda: torch._weight_int4pack_mm(x, w_tiny, GROUP, sz)

    def torch_backend():
        with use_backend("torch"):
            return torch.ops.kernelswap.int4_linear(x, ws, sc, z, GROUP, None)

    out["dequant+cublas"] = torch_backend
    if m <= gemv_mod.GEMV_M_MAX:
        out["triton_gemv"] = lambda: gemv_mod.w4a16_gemv(x, ws, sc, z, GROUP)
    if m in (1, 16) and (m != 1 or n == 28672):  # the dot path at M=1 only on P3 (compile time)
        out["triton_gemm_small"] = lambda: gemm_mod.w4a16_gemm(x, ws, sc, z, GROUP, small_m=True)
    if m > gemm_mod.SMALL_M_MAX:
        out["triton_gemm_large"] = lambda: gemm_mod.w4a16_gemm(x, ws, sc, z, GROUP, small_m=False)
    return out


def best_configs():
    rows = []
    for name, tuner in [("gemv", gemv_mod._GEMV), ("gemm_small", gemm_mod._SMALL), ("gemm_large", gemm_mod._LARGE)]:
        for key, cfg in tuner.cache.items():
            rows.append(f"{name} key={key} -> {cfg}")
    return rows


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    dev = torch.cuda.get_device_name()
    tag = dict(gpu=dev, torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
               commit=os.environ.get("KS_COMMIT", "unknown"), date=datetime.date.today().isoformat())
    rows, table = [], []
    csv_path = os.path.join(out_dir, "int4_triton_quick.csv")
    for label, m, k, n in SHAPES:
        torch.manual_seed(0)
        w = torch.randn(n, k, device="cuda") * 0.02
        q = quantize_int4(w, GROUP, symmetric=False)
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        ref = x.float() @ dequantize_int4_ref(q.packed, q.scales, q.zeros, GROUP)[:, :k].t()
        wbytes = q.packed.numel() + q.scales.numel() * 2 + q.zeros.numel() + x.numel() * 2 + m * n * 2
        base = None
        for prov, fn in providers(m, k, n, x, q).items():
            try:
                y = fn()
                err = ((y.float() - ref).norm() / ref.norm()).item()
                p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            except Exception as e:  # noqa: BLE001 - one failing provider must not lose the others
                print(f"{label} {m}x{k}x{n} {prov}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            us = p50 * 1e3
            if prov == "cublas_bf16":
                base = us
            row = dict(op="int4_linear", provider=prov, shape=f"{m}x{k}x{n}", target=label, dtype="bf16",
                       group=GROUP, p50_us=round(us, 2), p20_us=round(p20 * 1e3, 2), p80_us=round(p80 * 1e3, 2),
                       tflops=round(2 * m * k * n / (us * 1e-6) / 1e12, 2),
                       int4_gbps=round(wbytes / (us * 1e-6) / 1e9, 1), rel_err=f"{err:.2e}",
                       vs_bf16=round(us / base, 3) if base else "", **tag)
            rows.append(row)
            table.append(f"{label:3s} {m:5d}x{k}x{n:<6d} {prov:18s} {us:10.1f} us  x{row['vs_bf16']!s:6s} "
                         f"{row['int4_gbps']:8.1f} GB/s {row['tflops']:7.1f} TF/s  err {err:.1e}")
            print(table[-1], flush=True)
            with open(csv_path, "w", newline="") as f:  # rewrite as we go: a timeout keeps what was measured
                wr = csv.DictWriter(f, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
        del w, q, x, ref
        torch.cuda.empty_cache()
    print("\n".join(best_configs()))
    print(f"\n{dev} torch {torch.__version__} triton {triton.__version__}; p50 of do_bench; "
          "GB/s counts int4 weight + scales + zeros + x + out")
    print("\n".join(table))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
