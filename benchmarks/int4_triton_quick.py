"""Quick W4A16 timing: our Triton kernels vs cuBLAS bf16, tinygemm and dequantize + cuBLAS.

    python3 benchmarks/int4_triton_quick.py [OUT_DIR]

GPU session (one call): python3 -m pip install --no-build-isolation --no-deps -e . (use
python3 -m pip: a bare `pip` installed kernelswap where `python` did not see it), then
python3 -m pytest -q tests/test_int4_dispatch.py, then this script (~45 kernel
compilations; KS_BENCH_BUDGET_S=<s> skips the providers left when that time is spent, so
the table still prints inside a time limit).

Group 128, asymmetric, bf16 activations; shapes M x K x N (weight N x K): the TARGETS.md
rows P3 / P4 / P5 and an M sweep on 4096 x 14336 that places every dispatch threshold of
kernelswap.ops.int4_triton / int4_tinygemm. Providers: cuBLAS bf16, tinygemm (raw, and
ours through PreparedWeights), dequantize + cuBLAS (the torch backend's large-M path; the
old fp32 reference dequantize once at M = 4096), each Triton kernel where it applies, the
dequantize pass alone per tile config, and "auto": the public op with the dispatcher free,
with the implementation it picked. Every provider is timed in the same process with
triton.testing.do_bench (CUDA events, L2 flushed before each call, median with p20 / p80).
Writes int4_triton_quick.csv (long format, tagged with GPU, versions, commit, date) and
prints a table last.
"""
from __future__ import annotations

import csv
import datetime
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

from kernelswap.kernels import w4a16_gemm as gemm_mod
from kernelswap.kernels import w4a16_gemv as gemv_mod
from kernelswap.kernels import w4a16_dequant as dequant_mod
from kernelswap.ops import int4, int4_tinygemm
from kernelswap.ops.backend import choose
from kernelswap.ops.int4 import dequantize_int4_ref
from kernelswap.ops.int4_tinygemm import inner_k_tiles, tinygemm_codes, tinygemm_scales_and_zeros
from kernelswap.packing import quantize_int4

GROUP = 128
# (tag, K, N, Ms): one quantized weight per (K, N), timed at every M of its row. The
# 4096 x 14336 sweep places each dispatch threshold (tinygemm / gemv / gemm_small /
# gemm_large / dequant + cuBLAS); P3 / P4 / P5 are the TARGETS.md rows.
WEIGHTS = [
    ("", 4096, 14336, (1, 4, 8, 16, 32, 128, 256, 512, 1024, 4096)),
    ("P3", 8192, 28672, (1,)), ("P4", 8192, 28672, (16,)), ("P5", 8192, 8192, (4096, 512)),
]
TINYGEMM_TIMED_TO = 32  # tinygemm at M = 128 was 521 us vs 57 us for cuBLAS: not worth timing


def tinygemm_operands(q):
    """The baseline tinygemm weights, converted outside the timed region (ops/int4_tinygemm.py)."""
    kp = q.packed.shape[1] * 2
    w_tiny = torch._convert_weight_to_int4pack(tinygemm_codes(q.packed), inner_k_tiles(kp))
    return w_tiny, tinygemm_scales_and_zeros(q.scales, q.zeros)


def providers(m, k, n, x, q, w_bf16, w_tiny, sz):
    ws, sc, z = q.packed, q.scales, q.zeros
    out = {"cublas_bf16": lambda: F.linear(x, w_bf16)}
    if m <= TINYGEMM_TIMED_TO:
        out["tinygemm"] = lambda: torch._weight_int4pack_mm(x, w_tiny, GROUP, sz)
        out["ours_tinygemm"] = lambda: int4_tinygemm.tinygemm_linear(x, ws, sc, z, GROUP, None)
    out["dequant+cublas"] = lambda: int4._int4_linear_torch(x, ws, sc, z, GROUP, None)
    if m == 4096:  # the old path (fp32 reference dequantize, then cast), for the record
        out["dequant_ref+cublas"] = lambda: F.linear(x, dequantize_int4_ref(ws, sc, z, GROUP)[:, :k].to(x.dtype))
    if m in (1, 4):
        out["triton_gemv"] = lambda: gemv_mod.w4a16_gemv(x, ws, sc, z, GROUP)
    if m in (4, 8, 16):
        out["triton_gemm_small"] = lambda: gemm_mod.w4a16_gemm(x, ws, sc, z, GROUP, small_m=True)
    if m > gemm_mod.SMALL_M_MAX:
        out["triton_gemm_large"] = lambda: gemm_mod.w4a16_gemm(x, ws, sc, z, GROUP, small_m=False)
    # What users get: the public op, dispatcher free (its pick goes in the table).
    out["auto"] = lambda: torch.ops.kernelswap.int4_linear(x, ws, sc, z, GROUP, None)
    return out


def picked(x, q) -> str:
    impl = choose("int4_linear", x.device, x, q.packed, q.scales, q.zeros, GROUP, None)
    return f"{impl.backend}:{impl.fn.__name__}"


def best_configs():
    rows = []
    for name, tuner in [("gemv", gemv_mod._GEMV), ("gemm_small", gemm_mod._SMALL), ("gemm_large", gemm_mod._LARGE)]:
        for key, cfg in tuner.cache.items():
            rows.append(f"{name} key={key} -> {cfg}")
    return rows


def _row(tag, label, prov, m, k, n, us, p20, p80, nbytes, err, base, pick=""):
    return dict(op="int4_linear", provider=prov, shape=f"{m}x{k}x{n}", target=label, dtype="bf16", group=GROUP,
                p50_us=round(us, 2), p20_us=round(p20 * 1e3, 2), p80_us=round(p80 * 1e3, 2),
                tflops=round(2 * m * k * n / (us * 1e-6) / 1e12, 2), gbps=round(nbytes / (us * 1e-6) / 1e9, 1),
                rel_err=err, vs_bf16=round(us / base, 3) if base else "", picked=pick, **tag)


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    dev = torch.cuda.get_device_name()
    tag = dict(gpu=dev, torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
               commit=os.environ.get("KS_COMMIT", "unknown"), date=datetime.date.today().isoformat())
    deadline = time.time() + float(os.environ.get("KS_BENCH_BUDGET_S", "1e9"))  # keep time for the table
    rows, table = [], []
    csv_path = os.path.join(out_dir, "int4_triton_quick.csv")

    def emit(row):
        rows.append(row)
        table.append(f"{row['target']:3s} {row['shape']:>17s} {row['provider']:19s} {row['p50_us']:10.1f} us  "
                     f"x{row['vs_bf16']!s:6s} {row['gbps']:8.1f} GB/s {row['tflops']:7.1f} TF/s  "
                     f"err {row['rel_err']} {row['picked']}")
        print(table[-1], flush=True)
        with open(csv_path, "w", newline="") as f:  # rewrite as we go: a timeout keeps what was measured
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)

    for label, k, n, ms in WEIGHTS:
        torch.manual_seed(0)
        q = quantize_int4(torch.randn(n, k, device="cuda") * 0.02, GROUP, symmetric=False)
        w32 = dequantize_int4_ref(q.packed, q.scales, q.zeros, GROUP)[:, :k]
        w_bf16 = w32.to(torch.bfloat16)
        w_tiny, sz = tinygemm_operands(q)
        qbytes = q.packed.numel() + q.scales.numel() * 2 + q.zeros.numel()
        # The dequantize pass alone, per tile config: bytes = packed weight + scales + zeros + bf16 written.
        for i, cfg in enumerate(dequant_mod.DEQUANT_SWEEP):
            fn = lambda: dequant_mod.w4a16_dequant(q.packed, q.scales, q.zeros, GROUP, k, torch.bfloat16, config=cfg)
            exact = "exact" if torch.equal(fn(), w_bf16) else "NOT-EXACT"
            p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            emit(_row(tag, label, f"dequant_only#{i}", 0, k, n, p50 * 1e3, p20, p80, qbytes + n * k * 2, exact, None,
                      "{BLOCK_N}x{BLOCK_K}w{num_warps}".format(**cfg)))
        for m in ms:
            x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
            ref = x.float() @ w32.t()
            nbytes = qbytes + x.numel() * 2 + m * n * 2
            base = None
            for prov, fn in providers(m, k, n, x, q, w_bf16, w_tiny, sz).items():
                if time.time() > deadline:
                    print(f"{label} {m}x{k}x{n} {prov}: skipped (KS_BENCH_BUDGET_S spent)", flush=True)
                    continue
                try:
                    y = fn()
                    err = f"{((y.float() - ref).norm() / ref.norm()).item():.2e}"
                    p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
                except Exception as e:  # noqa: BLE001 - one failing provider must not lose the others
                    print(f"{label} {m}x{k}x{n} {prov}: FAILED {type(e).__name__}: {e}", flush=True)
                    continue
                us = p50 * 1e3
                base = us if prov == "cublas_bf16" else base
                emit(_row(tag, label, prov, m, k, n, us, p20, p80, nbytes, err, base,
                          picked(x, q) if prov == "auto" else ""))
            del x, ref
        del q, w32, w_bf16, w_tiny, sz
        torch.cuda.empty_cache()
    print("\n".join(best_configs()))
    print(f"\n{dev} torch {torch.__version__} triton {triton.__version__}; p50 of do_bench; GB/s counts int4 "
          "weight + scales + zeros + x + out (dequant_only: + the bf16 weight written)")
    print("\n".join(table))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
