"""Quick GPU timing of the Triton int8 kernels against their baselines (issue 4, items 1-2).

  python benchmarks/int8_triton_quick.py --warm I/N   compile + tune a share of the cases
                                                      (run N of these in parallel; timings
                                                      they cache are not trusted: delete
                                                      *.autotune.json from the Triton cache)
  python benchmarks/int8_triton_quick.py --out DIR    time every case, one after another

Shapes (M x K x N, weight N x K): TARGETS.md P1 4096x8192x8192 and P2 16x8192x28672, plus
M = 1 and 128 at 8192x28672. Providers, all timed in the same process:
  W8A8   ours (quant kernel + int8 GEMM; variants: pointer / TMA loads, split-K), ours GEMM
         only, bf16 F.linear, eager quant + torch._int_mm (M > 16 only: _int_mm's rule)
  W8A16  ours (variants as above), bf16 F.linear, the "torch" backend (dequantize + F.linear)
Each of our variants is checked against the reference op before it is timed.
Prints one CSV row per case (median / p20 / p80 us, TOP/s, ratio to bf16) and a table.

One GPU session (tests + warm-up in parallel, then timing alone); on the GPU image use
`python3` for everything (a bare `pip` / `python` there is not the interpreter with torch):

  set -o pipefail; export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache
  KERNELSWAP_BUILD_CUDA=off python3 -m pip install --no-build-isolation --no-deps -e . -q \
      && python3 -c "import kernelswap.kernels.int8_gemm" || exit 1
  timeout 140 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_int8_triton.py > $OUT/tests.log 2>&1 &
  for j in 0 1 2 3 4 5; do timeout 140 python3 benchmarks/int8_triton_quick.py --warm $j/6 > $OUT/w$j.txt 2>&1 & done
  wait; cat $OUT/w*.txt > $OUT/warm.log; rm $OUT/w*.txt
  find /tmp/tcache -name '*.autotune.json' -delete
  timeout 120 python3 benchmarks/int8_triton_quick.py --out $OUT > $OUT/bench.log 2>&1
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from kernelswap.kernels import int8_gemm, int8_quant, w8a16_gemm
from kernelswap.ops.int8 import (_int8_weight_linear_torch, int8_weight_linear_ref, quantize_per_token_ref,
                                 scale_epilogue_ref)

SHAPES = [(1, 8192, 28672), (16, 8192, 28672), (128, 8192, 28672), (4096, 8192, 8192)]
DT = torch.bfloat16


def inputs(m, k, n):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=DT, generator=g)
    w = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8, generator=g)
    w_s = (torch.rand(n, device="cuda", generator=g) * 1e-2 + 1e-3)
    bias = torch.randn(n, device="cuda", dtype=DT, generator=g)
    w_bf16 = (w.to(DT) * w_s.to(DT)[:, None]).contiguous()
    return x, w, w_s, bias, w_bf16


def cases():
    """(name, shape, make(x, w, w_s, bias, w_bf16) -> (fn, check) ) ; check None for baselines."""
    out = []
    for shape in SHAPES:
        m = shape[0]
        splits = [None, 1, 2, 4] if m <= 16 else [None]
        for tma in (False, True):
            for sk in splits:
                tag = f"{'tma' if tma else 'ptr'}{'' if sk is None else f'_sk{sk}'}"
                out.append((f"w8a8_ours_{tag}", shape, ("w8a8", tma, sk)))
                out.append((f"w8a16_ours_{tag}", shape, ("w8a16", tma, sk)))
        out.append(("w8a8_gemm_only_ptr", shape, ("gemm", False, None)))
        out.append(("bf16_F.linear", shape, ("bf16", None, None)))
        out.append(("w8a16_torch_backend", shape, ("w8a16_torch", None, None)))
        if m > 16:
            out.append(("w8a8_eager_quant+_int_mm", shape, ("int_mm", None, None)))
    return out


def build(kind, x, w, w_s, bias, w_bf16):
    what, tma, sk = kind
    if what == "w8a8":
        def fn():
            q, s = int8_quant.quantize_per_token(x)
            return int8_gemm.int8_scaled_mm(q, s, w, w_s, bias, x.dtype, split_k=sk, use_tma=tma)
        return fn
    if what == "gemm":
        q, s = int8_quant.quantize_per_token(x)
        return lambda: int8_gemm.int8_scaled_mm(q, s, w, w_s, bias, x.dtype, split_k=sk, use_tma=tma)
    if what == "w8a16":
        return lambda: w8a16_gemm.int8_weight_linear(x, w, w_s, bias, split_k=sk, use_tma=tma)
    if what == "bf16":
        return lambda: F.linear(x, w_bf16, bias)
    if what == "w8a16_torch":
        return lambda: _int8_weight_linear_torch(x, w, w_s, bias)
    if what == "int_mm":
        def fn():
            q, s = quantize_per_token_ref(x)
            return scale_epilogue_ref(torch._int_mm(q, w.t()), s, w_s, bias, x.dtype)
        return fn
    raise ValueError(what)


def check(kind, y, x, w, w_s, bias):
    """Our W8A8 must equal eager quant + exact int matmul + the reference epilogue bit for
    bit; W8A16 must be within 2x of the fp32-accumulating reference's error vs float64."""
    what = kind[0]
    if what in ("w8a8", "gemm"):
        q, s = quantize_per_token_ref(x)
        acc = (q.double() @ w.double().t()).to(torch.int32)
        ref = scale_epilogue_ref(acc, s, w_s, bias, x.dtype)
        bad = int((y != ref).sum())
        return f"exact" if bad == 0 else f"MISMATCH {bad}/{y.numel()}"
    if what == "w8a16":
        ref64 = (x.double() @ w.double().t()) * w_s.double() + bias.double()
        ref = int8_weight_linear_ref(x, w, w_s, bias)
        e = ((y.double() - ref64).norm() / ref64.norm()).item()
        e_ref = ((ref.double() - ref64).norm() / ref64.norm()).item()
        return f"relerr {e:.2e} (ref {e_ref:.2e})" + ("" if e <= 2 * e_ref + 1e-6 else " TOO LARGE")
    return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warm", default=None, help="I/N: compile + tune share I of N, no timing")
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    all_cases = cases()
    if args.warm:
        i, n = map(int, args.warm.split("/"))
        cache = {}
        for name, shape, kind in all_cases[i::n]:
            if shape not in cache:
                cache.clear()
                cache[shape] = inputs(*shape)
            t0 = time.time()
            try:
                build(kind, *cache[shape])()
                torch.cuda.synchronize()
                print(f"warm {name} {shape} {time.time() - t0:.1f}s", flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on warming the rest
                print(f"warm {name} {shape} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        return
    gpu = torch.cuda.get_device_name()
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                date=time.strftime("%Y-%m-%d"))
    print(meta, flush=True)
    rows = []
    path = os.path.join(args.out, "int8_triton_quick.csv")
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["case", "M", "K", "N", "p50_us", "p20_us", "p80_us", "TOPs", "x_bf16", "check"] + list(meta))
        for shape in SHAPES:
            data = inputs(*shape)
            m, k, n = shape
            bf16_us = None
            for name, shp, kind in [c for c in all_cases if c[1] == shape]:
                try:
                    fn = build(kind, *data)
                    y = fn()
                    chk = check(kind, y, *data[:4])
                    p50, p20, p80 = (1e3 * t for t in do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
                except Exception as e:  # noqa: BLE001 - one failing variant must not hide the rest
                    print(f"{name} {shape} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                if kind[0] == "bf16":
                    bf16_us = p50
                tops = 2 * m * k * n / (p50 * 1e-6) / 1e12
                row = [name, m, k, n, f"{p50:.1f}", f"{p20:.1f}", f"{p80:.1f}", f"{tops:.0f}", "", chk]
                rows.append(row)
                wr.writerow(row + list(meta.values()))
                f.flush()
                print(",".join(map(str, row)), flush=True)
            for r in rows:
                if (r[1], r[2], r[3]) == shape and bf16_us:
                    r[8] = f"{float(r[4]) / bf16_us:.2f}"
            del data
            torch.cuda.empty_cache()
    print(f"\n{gpu} ({meta['date']}, torch {meta['torch']}, triton {meta['triton']}); us = do_bench median")
    print(f"{'case':30s} {'MxKxN':>18s} {'p50 us':>9s} {'TOP/s':>6s} {'x bf16':>7s}  check")
    for r in rows:
        print(f"{r[0]:30s} {f'{r[1]}x{r[2]}x{r[3]}':>18s} {r[4]:>9s} {r[7]:>6s} {r[8]:>7s}  {r[9]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
