"""Quick GPU timing of the 2:4 small-M Triton kernels against their baselines, in one run.

    python benchmarks/sparse24_triton_quick.py [--csv results.csv] [--commit HASH]

GPU session (repository root, ~3 minutes: ~45 kernel compiles in the tests, ~20 more here).
Install with the interpreter that runs the tests (`python -m pip`: a bare `pip` there
belongs to another interpreter, and kernelswap then does not import):
    export PYTHONUNBUFFERED=1
    KERNELSWAP_BUILD_CUDA=off python -m pip install --no-build-isolation --no-deps -e . -q
    python -m pytest -q -rf -p no:cacheprovider tests/test_sparse24_triton.py > $OUT/tests.log 2>&1
    python benchmarks/sparse24_triton_quick.py --csv $OUT/sparse24_quick.csv --commit SHA > $OUT/bench.log 2>&1
Run the tests first: they tune the 14336 x 4096 keys and compile the kernels the
benchmark reuses (Triton's on-disk caches).

Shapes (M tokens) x (K in) x (N out), weight N x K, bf16, TARGETS.md P7 plus the small-M
family: M in {1, 16, 64} x 8192 x 28672 and 16 x 4096 x 14336, plus M = 256 / 1024 to
find where dense decompress + cuBLAS (the "torch" backend) overtakes the kernel.
Providers, all timed here with triton.testing.do_bench (median, p20, p80; L2 flushed
before every repetition; weights are far larger than L2 anyway):
  dense        F.linear bf16 on the dense (pruned) weight: the layer the swap replaces
  cusparselt   F.linear on torch.sparse.to_sparse_semi_structured(w), _FORCE_CUTLASS=False
  torch_be     the "torch" backend: decompress_24 + F.linear, every call
  triton       our launcher, autotuned (the mode the op picks for this M)
  triton_fma / triton_dot   both modes at M = 1
  op           ks.ops.sparse24_linear (custom-op dispatch + launcher)
int8 (sparse24_int8_linear): triton_gemm (pre-quantized activations), op (quantization
+ GEMM), cusparselt_int8 (torch._cslt_sparse_mm, GEMM only) where it runs.
Every row is checked against a reference first (bf16: relative error vs F.linear;
int8: bit-exact vs the reference op). Prints a table last.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import sys
import traceback

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

import kernelswap as ks
from kernelswap import packing as P
from kernelswap.kernels import sparse24_gemv as S
from kernelswap.ops.backend import use_backend
from kernelswap.ops.int8 import quantize_per_token_ref
from kernelswap.ops.sparse24 import _sparse24_linear_torch, sparse24_int8_linear_ref

FLOAT_SHAPES = {(8192, 28672): (1, 16, 64, 256, 1024), (4096, 14336): (1, 16)}  # (K, N): M list
INT8_SHAPES = {(8192, 28672): (1, 16, 64), (4096, 14336): (16,)}
COPY_PEAK_NOTE = "GB/s counts values + meta + x + out once"


def _time(fn):
    p50, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return p50 * 1e3, p20 * 1e3, p80 * 1e3


class Table:
    def __init__(self, meta):
        self.rows, self.meta = [], meta

    def add(self, op, provider, m, k, n, t, nbytes, check=""):
        p50, p20, p80 = t
        self.rows.append(dict(op=op, provider=provider, M=m, K=k, N=n, p50_us=round(p50, 2), p20_us=round(p20, 2),
                              p80_us=round(p80, 2), GBps=round(nbytes / p50 / 1e3, 1), check=check, **self.meta))
        print(f"  {op:22s} {provider:14s} {m:5d}x{k}x{n}  {p50:9.1f} us  {nbytes / p50 / 1e3:7.0f} GB/s  {check}",
              flush=True)

    def guarded(self, op, provider, m, k, n, fn, nbytes, check=lambda: ""):
        try:
            c = check()
            self.add(op, provider, m, k, n, _time(fn), nbytes, c)
        except Exception as e:  # noqa: BLE001 - one failing provider must not end the run
            print(f"  {op:22s} {provider:14s} {m:5d}x{k}x{n}  FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _cusparselt(w):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return to_sparse_semi_structured(w)


def bench_float(tab, k, n, ms):
    dt = torch.bfloat16
    w = P.prune_24(torch.randn(n, k, device="cuda", dtype=dt))
    values, meta = P.compress_24(w)
    try:
        w_sparse = _cusparselt(w)
    except Exception as e:  # noqa: BLE001
        print(f"  cuSPARSELt unavailable: {e}")
        w_sparse = None
    wbytes = values.nbytes + meta.nbytes
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=dt)
        nbytes = wbytes + 2 * m * (k + n)
        dense = F.linear(x, w)
        args = ("sparse24_linear", m, k, n)
        tab.guarded(*args[:1], "dense", *args[1:], lambda: F.linear(x, w), 2 * n * k + 2 * m * (k + n))
        if w_sparse is not None:
            tab.guarded(*args[:1], "cusparselt", *args[1:], lambda: F.linear(x, w_sparse), nbytes,
                        lambda: f"rel {_rel(F.linear(x, w_sparse), dense):.1e}")
        tab.guarded(*args[:1], "torch_be", *args[1:], lambda: _sparse24_linear_torch(x, values, meta, None), nbytes)
        if m <= S.FMA_LIMIT_M:
            for use_dot in (False, True):
                tab.guarded(*args[:1], "triton_dot" if use_dot else "triton_fma", *args[1:],
                            lambda: S.sparse24_linear(x, values, meta, use_dot=use_dot), nbytes,
                            lambda: f"rel {_rel(S.sparse24_linear(x, values, meta, use_dot=use_dot), dense):.1e}")
        tab.guarded(*args[:1], "triton", *args[1:], lambda: S.sparse24_linear(x, values, meta), nbytes,
                    lambda: f"rel {_rel(S.sparse24_linear(x, values, meta), dense):.1e}")
        if m <= 64:
            with use_backend("triton"):
                tab.guarded(*args[:1], "op", *args[1:], lambda: ks.ops.sparse24_linear(x, values, meta, None), nbytes)
    del w, values, meta, w_sparse
    torch.cuda.empty_cache()


def bench_int8(tab, k, n, ms):
    w_q, w_scale = P.quantize_int8(P.prune_24(torch.randn(n, k, device="cuda")))
    values, meta = P.compress_24(w_q)
    try:
        comp = torch._cslt_compress(w_q)
    except Exception as e:  # noqa: BLE001
        print(f"  cuSPARSELt int8 unavailable: {e}")
        comp = None
    wbytes = values.nbytes + meta.nbytes
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, a_scale = quantize_per_token_ref(x)
        ref = sparse24_int8_linear_ref(x, values, meta, w_scale, None)
        nbytes = wbytes + m * k + 2 * m * n
        args = ("sparse24_int8_linear", m, k, n)

        def exact(fn):
            return lambda: f"{int((fn() != ref).sum())} of {ref.numel()} differ"

        gemm = lambda: S.sparse24_int8_linear(q, a_scale, values, meta, w_scale, None, x.dtype)  # noqa: E731
        tab.guarded(*args[:1], "triton_gemm", *args[1:], gemm, nbytes, exact(gemm))
        with use_backend("triton"):
            op = lambda: ks.ops.sparse24_int8_linear(x, values, meta, w_scale, None)  # noqa: E731
            tab.guarded(*args[:1], "op", *args[1:], op, nbytes, exact(op))
        if comp is not None:
            mp = max(32, triton.cdiv(m, 32) * 32)  # cuSPARSELt wants the dense dimension padded
            qp = torch.zeros(mp, k, device="cuda", dtype=torch.int8)
            qp[:m] = q
            tab.guarded(*args[:1], "cusparselt_i8", *args[1:],
                        lambda: torch._cslt_sparse_mm(comp, qp.t(), out_dtype=torch.int32), nbytes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default="")
    ap.add_argument("--commit", default="unknown")
    a = ap.parse_args()
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                cuda=torch.version.cuda, commit=a.commit, date=datetime.date.today().isoformat())
    print(meta, COPY_PEAK_NOTE, flush=True)
    tab = Table(meta)
    buf = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    src = torch.randint(0, 255, (256 << 20,), dtype=torch.uint8, device="cuda")
    tab.add("copy_256MiB", "torch", 0, 0, 0, _time(lambda: buf.copy_(src)), 2 * buf.nbytes)
    del buf, src
    for (k, n), ms in FLOAT_SHAPES.items():
        bench_float(tab, k, n, ms)
    for (k, n), ms in INT8_SHAPES.items():
        bench_int8(tab, k, n, ms)
    for name, tuner in (("fma", S._FMA), ("dot", S._DOT)):
        for key, cfg in tuner.cache.items():
            print(f"  tuned {name} {key[:7]}: {cfg}")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(tab.rows[0]))
            wr.writeheader()
            wr.writerows(tab.rows)
    # Summary: ours vs the dense layer and cuSPARSELt, per shape.
    print("\nop                     M x K x N            provider        p50 us   vs dense")
    dense = {(r["op"], r["M"], r["K"], r["N"]): r["p50_us"] for r in tab.rows if r["provider"] == "dense"}
    for r in tab.rows:
        d = dense.get(("sparse24_linear", r["M"], r["K"], r["N"]))
        ratio = f"{r['p50_us'] / d:.2f}x" if d else ""
        print(f"{r['op']:22s} {r['M']:5d}x{r['K']}x{r['N']:<6d} {r['provider']:14s} {r['p50_us']:9.1f}  {ratio}")


if __name__ == "__main__":
    main()
