"""Quick timing of kernelswap._C's sm_90a GEMMs against their baselines, in one run.

    python benchmarks/ext_quick.py [--csv FILE]     # the TARGETS.md shapes P1, P6, P7, P8

compute-sanitizer runs of these kernels (and the Triton ones): benchmarks/sanitize.sh.

Times are triton.testing.do_bench medians (p20 / p80 beside them) of CUDA events, inputs
random (never zeros), the weight larger than L2. Every baseline is timed in the same run:
F.linear bf16 (cuBLAS), torch._int_mm (+ eager quantization and scales for the end-to-end
rows), cuSPARSELt through torch._cslt_sparse_mm and to_sparse_semi_structured.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import sys

import torch
import torch.nn.functional as F

from kernelswap import packing
from kernelswap.ops import use_backend
from kernelswap.ops.int8 import quantize_per_token_ref, scale_epilogue_ref

C = torch.ops.kernelswap


def _bench(fn):
    from triton.testing import do_bench
    p50, p20, p80 = do_bench(fn, warmup=50, rep=300, quantiles=[0.5, 0.2, 0.8])
    return p50 * 1e3, p20 * 1e3, p80 * 1e3  # us


def _sparse_weight(n, k, dtype):
    w = packing.prune_24(torch.randn(n, k, device="cuda"))
    if dtype == torch.int8:
        w_q, w_s = packing.quantize_int8(w)
        return w_q, w_s
    return w.to(dtype), None


def _try(rows, label, shape, flops, fn, ref_us=None):
    try:
        fn()
        torch.cuda.synchronize()
        p50, p20, p80 = _bench(fn)
        rows.append((label, shape, p50, p20, p80, flops / p50 / 1e6))
    except Exception as e:  # noqa: BLE001 - a failing baseline is reported, not fatal
        rows.append((label, shape, float("nan"), float("nan"), float("nan"), float("nan")))
        print(f"  {label} {shape}: failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", file=sys.stderr)


def sparse_rows(rows, m, k, n, dtype):
    shape = f"{m}x{k}x{n}"
    flops = 2.0 * m * n * k
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_bf16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    _try(rows, "F.linear bf16 dense (cuBLAS)", shape, flops, lambda: F.linear(x, w_bf16))
    del w_bf16
    if dtype == torch.bfloat16:
        w, _ = _sparse_weight(n, k, torch.bfloat16)
        values, meta = packing.compress_24(w)
        with use_backend("cuda"):
            C.sparse24_linear(x, values, meta, None)  # prepare once
            _try(rows, "ours sparse24_linear bf16", shape, flops, lambda: C.sparse24_linear(x, values, meta, None))
        try:
            comp = torch._cslt_compress(w)
            _try(rows, "cuSPARSELt _cslt_sparse_mm bf16", shape, flops,
                 lambda: torch._cslt_sparse_mm(comp, x.t(), transpose_result=True))
        except Exception as e:  # noqa: BLE001
            print(f"  cuSPARSELt bf16 unavailable: {e}", file=sys.stderr)
        try:
            from torch.sparse import to_sparse_semi_structured
            ws = to_sparse_semi_structured(w)
            _try(rows, "F.linear to_sparse_semi_structured bf16", shape, flops, lambda: F.linear(x, ws))
        except Exception as e:  # noqa: BLE001
            print(f"  to_sparse_semi_structured unavailable: {e}", file=sys.stderr)
    else:
        w_q, w_s = _sparse_weight(n, k, torch.int8)
        values, meta = packing.compress_24(w_q)
        q, s = quantize_per_token_ref(x)
        with use_backend("cuda"):
            C.sparse24_int8_linear(x, values, meta, w_s, None)
            v, e = C._C_sparse24_prepare(w_q)
            _try(rows, "ours sparse24_int8_linear (quant+GEMM)", shape, flops,
                 lambda: C.sparse24_int8_linear(x, values, meta, w_s, None))
            _try(rows, "ours _C_sparse24_int8_mm (GEMM only)", shape, flops,
                 lambda: C._C_sparse24_int8_mm(q, s, v, e, w_s, None, torch.bfloat16))
        try:
            comp = torch._cslt_compress(w_q)
            _try(rows, "cuSPARSELt int8 -> bf16 (GEMM only)", shape, flops,
                 lambda: torch._cslt_sparse_mm(comp, q.t(), out_dtype=torch.bfloat16, transpose_result=True))
            _try(rows, "cuSPARSELt int8 -> int32 (GEMM only)", shape, flops,
                 lambda: torch._cslt_sparse_mm(comp, q.t(), out_dtype=torch.int32, transpose_result=True))
        except Exception as e:  # noqa: BLE001
            print(f"  cuSPARSELt int8 unavailable: {e}", file=sys.stderr)


def int8_rows(rows, m, k, n):
    shape = f"{m}x{k}x{n}"
    flops = 2.0 * m * n * k
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_bf16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    _try(rows, "F.linear bf16 dense (cuBLAS)", shape, flops, lambda: F.linear(x, w_bf16))
    w_q, w_s = packing.quantize_int8(w_bf16.float())
    del w_bf16
    q, s = quantize_per_token_ref(x)
    with use_backend("cuda"):
        _try(rows, "ours int8_linear (quant+GEMM)", shape, flops, lambda: C.int8_linear(x, w_q, w_s, None))
    _try(rows, "ours _C_int8_mm (GEMM only)", shape, flops,
         lambda: C._C_int8_mm(q, s, w_q, w_s, None, torch.bfloat16))
    # the activation quantization alone (its TFLOP/s column counts the GEMM's FLOPs: read the us)
    _try(rows, "ours _C_quantize_per_token_int8 (alone)", shape, flops, lambda: C._C_quantize_per_token_int8(x))
    wt = w_q.t()
    _try(rows, "torch._int_mm (GEMM only, int32 out)", shape, flops, lambda: torch._int_mm(q, wt))

    def eager():
        qq, ss = quantize_per_token_ref(x)
        return scale_epilogue_ref(torch._int_mm(qq, wt), ss, w_s, None, x.dtype)
    _try(rows, "eager quant + torch._int_mm + scales", shape, flops, eager)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", help="write the rows here as CSV")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    int8_rows(rows, 4096, 8192, 8192)          # P1
    sparse_rows(rows, 4096, 8192, 28672, torch.bfloat16)  # P6
    sparse_rows(rows, 16, 8192, 28672, torch.bfloat16)    # P7
    sparse_rows(rows, 4096, 8192, 8192, torch.int8)       # P8
    int8_rows(rows, 16, 8192, 28672)           # P2 (small M)
    gpu = torch.cuda.get_device_name()
    meta = dict(gpu=gpu, torch=torch.__version__, cuda=torch.version.cuda,
                date=datetime.date.today().isoformat())
    base = {}
    print(f"\n{gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"{'shape (MxKxN)':<16} {'provider':<42} {'p50 us':>9} {'p20':>9} {'p80':>9} {'TFLOP/s':>8} {'x bf16':>7}")
    for label, shape, p50, p20, p80, tflops in rows:
        if label.startswith("F.linear bf16 dense"):
            base[shape] = p50
        ratio = p50 / base[shape] if shape in base else float("nan")
        print(f"{shape:<16} {label:<42} {p50:9.1f} {p20:9.1f} {p80:9.1f} {tflops:8.1f} {ratio:7.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["provider", "shape", "p50_us", "p20_us", "p80_us", "tflops", *meta])
            for row in rows:
                wr.writerow([*row, *meta.values()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
