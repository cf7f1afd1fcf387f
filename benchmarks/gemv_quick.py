"""Decode GEMVs (csrc/gemv) against cuBLAS bf16, in % of the copy bandwidth measured in the same run.

    python3 benchmarks/gemv_quick.py --out gemv_quick.csv [--with-triton] [--dtype bf16|fp16]
                                     [--kernels w8a8,s24] [--ms 1,16] [--int8-layout rows|prepared]

Needs a GPU and a kernelswap._C built with csrc/gemv. Kernels: W4A16 (group 128 asymmetric and
group 32 symmetric), W8A16, W8A8 (per-token quantization inside), 2:4 ("s24": values + meta) and
2:4-int8 ("s24i8": int8 values + meta + per-channel scales, per-token quantization inside), each
through the public op with the cuda backend forced (so host time is the op's real per-call path),
and on an sm_90 GPU the CUTLASS GEMMs (quantize kernel + int8 GEMM, dense and 2:4) they displace;
--with-triton adds the Triton backend of the same ops. At M in {1, 4, 8, 16, 64} on (K, N) in
{(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)} (--kernels, --ms: a subset). Each provider cycles through enough
copies of its weights that they cannot sit in L2. us = one call's time replayed from a CUDA graph
of one call per weight copy (the kernels alone, no host time); eager_us = do_bench's median of one
eager call (it clears L2 first), which also holds the host time where that outlasts the GPU work.
GB/s counts the weight bytes the kernel must read (codes + scales + zeros, public sizes); % copy is
that against a device-to-device copy timed here; "x bf16" is the time over cuBLAS bf16's (F.linear)
at the same M. --int8-layout prepared makes W8A16 / W8A8 stream gemv_layout's prepared copy of the
weight instead of the layer's own (N, K) weight (gemv_cuda.INT8_ROW_MAJOR). Prints a table last;
--out writes the CSV.
"""
from __future__ import annotations

import argparse
import csv
import itertools

import torch
import torch.nn.functional as F
import triton

import kernelswap
from kernelswap.bench.timing import capture_graph, replay_ms
from kernelswap.ops import backend, gemv_cuda, int8_cuda, sparse24_cuda
from kernelswap.ops.backend import Preference
from kernelswap.packing import compress_24, prune_24, quantize_int4

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]
MS = [1, 4, 8, 16, 64]
L2_BYTES = 60 * 2**20
ROTATE_BYTES = 4 * L2_BYTES  # each provider's copies together exceed L2 four times


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s (read + write of a 2 GiB buffer)."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=500)
    return 2 * src.numel() / (ms * 1e-3)


def copies(nbytes: int) -> int:
    return max(2, min(64, -(-ROTATE_BYTES // max(nbytes, 1))))


def make_weights(kind: str, k: int, n: int, count: int, dtype: torch.dtype = torch.bfloat16):
    """`count` independent weights of one kind: (op args after x, bytes the kernel must read)."""
    out = []
    for _ in range(count):
        if kind.startswith("w4a16"):
            group, symmetric = (128, False) if kind == "w4a16-g128" else (32, True)
            q = quantize_int4(torch.randn(n, k, device="cuda"), group, symmetric)
            args = (q.packed, q.scales, q.zeros, group, None)
            nbytes = sum(t.numel() * t.element_size() for t in (q.packed, q.scales, q.zeros) if t is not None)
            backend.prepare_weights("int4_linear", *args)
        elif kind == "s24":
            values, meta = compress_24(prune_24(torch.randn(n, k, device="cuda")).to(dtype))
            args = (values, meta, None)
            nbytes = values.numel() * values.element_size() + meta.numel()
            backend.prepare_weights("sparse24_linear", *args)
        elif kind == "s24i8":
            keep = prune_24(torch.randn(n, k, device="cuda")) != 0
            w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda") * keep
            values, meta = compress_24(w_q.to(torch.int8))
            w_s = torch.rand(n, device="cuda") * 1e-2
            args = (values, meta, w_s, None)
            nbytes = values.numel() + meta.numel() + w_s.numel() * 4
            backend.prepare_weights("sparse24_int8_linear", *args)
        else:
            w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
            w_s = torch.rand(n, device="cuda") * 1e-2
            args = (w_q, w_s, None)
            nbytes = w_q.numel() + w_s.numel() * 4
            backend.prepare_weights("int8_linear" if kind == "w8a8" else "int8_weight_linear", *args)
        out.append(args)
    return out, nbytes


OPS = {"w4a16-g128": "int4_linear", "w4a16-g32sym": "int4_linear", "w8a16": "int8_weight_linear",
       "w8a8": "int8_linear", "s24": "sparse24_linear", "s24i8": "sparse24_int8_linear"}
# The CUTLASS GEMMs (quantize + int8 GEMM) the W8A8 and 2:4-int8 GEMVs displace at decode M.
CUTLASS = {"w8a8": int8_cuda._int8_linear_cuda, "s24i8": sparse24_cuda._sparse24_int8_linear_cuda}


def time_rotating(fn, weights) -> float:
    """Median ms of one eager fn(weights[i]) with i cycling, so each call reads weights not in
    L2 (do_bench also clears L2 first): GPU time, plus host time where the call's host path
    outlasts the queued GPU work."""
    it = itertools.cycle(weights)
    return triton.testing.do_bench(lambda: fn(next(it)), warmup=25, rep=200)


def time_graph(fn, weights, replays: int = 5) -> float:
    """ms of one fn(weights[i]) replayed from a CUDA graph of one call per weight (no host time):
    the kernels' own time, each call reading weights the previous calls did not."""
    graph, _ = capture_graph(lambda: [fn(w) for w in weights])
    return replay_ms(graph, replays) / len(weights)


def row(kernel, be, m, k, n, ms, eager_ms, nbytes, bw, bf16_ms) -> dict:
    return dict(kernel=kernel, backend=be, M=m, K=k, N=n, us=ms * 1e3, GBps=nbytes / (ms * 1e-3) / 1e9,
                pct_copy=100 * nbytes / (ms * 1e-3) / bw, x_bf16=ms / bf16_ms[m], eager_us=eager_ms * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="CSV path")
    ap.add_argument("--with-triton", action="store_true", help="also time the Triton backend of each op")
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--kernels", default=",".join(OPS), help="which of " + ", ".join(OPS))
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="token counts")
    ap.add_argument("--int8-layout", choices=("rows", "prepared"), default="rows",
                    help="the int8 GEMVs' weight: the layer's own (default) or the prepared copy")
    opts = ap.parse_args()
    gemv_cuda.INT8_ROW_MAJOR = opts.int8_layout == "rows"
    kinds = [k for k in opts.kernels.split(",") if k]
    if unknown := set(kinds) - set(OPS):
        ap.error(f"--kernels: unknown {sorted(unknown)}; choose from {', '.join(OPS)}")
    ms_list = [int(m) for m in opts.ms.split(",") if m]
    dtype = torch.bfloat16 if opts.dtype == "bf16" else torch.float16
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"copy bandwidth: {bw / 1e9:.0f} GB/s on {torch.cuda.get_device_name()}")
    backends = ["cuda"] + (["triton"] if opts.with_triton else [])
    why = int8_cuda._int8_linear_supports(torch.empty(1, 4096, device="cuda", dtype=dtype),
                                         torch.empty(4096, 4096, device="cuda", dtype=torch.int8),
                                         torch.empty(4096, device="cuda"), None)
    cutlass_ok = why is None or isinstance(why, Preference)  # it can serve, even where it defers
    rows = []
    for k, n in SHAPES:
        dense_bytes = n * k * 2
        dense = [torch.randn(n, k, device="cuda").to(dtype) for _ in range(copies(dense_bytes))]
        xs = {m: torch.randn(m, k, device="cuda").to(dtype) for m in ms_list}
        bf16_ms = {m: time_graph(lambda w, x=xs[m]: F.linear(x, w), dense) for m in ms_list}
        bf16_eager = {m: time_rotating(lambda w, x=xs[m]: F.linear(x, w), dense) for m in ms_list}
        del dense
        for m in ms_list:
            rows.append(row("bf16 F.linear", "cublas", m, k, n, bf16_ms[m], bf16_eager[m], dense_bytes, bw, bf16_ms))
        for kind in kinds:
            op_name = OPS[kind]
            op = getattr(kernelswap.ops, op_name)
            probe, nbytes = make_weights(kind, k, n, 1, dtype)
            weights = probe + make_weights(kind, k, n, copies(nbytes) - 1, dtype)[0]
            for be, m in itertools.product(backends, ms_list):
                x = xs[m]
                try:
                    with kernelswap.use_backend(be):
                        op(x, *weights[0])  # raises where this backend cannot serve the call
                        ms = time_graph(lambda w, x=x: op(x, *w), weights)
                        eager = time_rotating(lambda w, x=x: op(x, *w), weights)
                except RuntimeError as e:
                    print(f"skip {kind} {be} M={m} K={k} N={n}: {str(e).splitlines()[0][:120]}")
                    continue
                rows.append(row(kind, be, m, k, n, ms, eager, nbytes, bw, bf16_ms))
            if kind in CUTLASS and cutlass_ok:
                for m in ms_list:
                    fn = lambda w, x=xs[m], f=CUTLASS[kind]: f(x, *w)  # noqa: E731
                    rows.append(row(kind, "cutlass", m, k, n, time_graph(fn, weights), time_rotating(fn, weights),
                                    nbytes, bw, bf16_ms))
            del weights, probe
            torch.cuda.empty_cache()
    with open(opts.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + ["copy_GBps", "gpu", "dtype", "int8_layout"])
        writer.writeheader()
        for r in rows:
            writer.writerow(dict(r, copy_GBps=bw / 1e9, gpu=torch.cuda.get_device_name(), dtype=opts.dtype,
                                 int8_layout=opts.int8_layout))
    print(f"\n{'kernel':<14}{'backend':<8}{'M':>4}{'K':>7}{'N':>7}{'us':>9}{'GB/s':>8}{'%copy':>7}{'x bf16':>8}"
          f"{'eager us':>10}")
    for r in rows:
        print(f"{r['kernel']:<14}{r['backend']:<8}{r['M']:>4}{r['K']:>7}{r['N']:>7}{r['us']:>9.1f}{r['GBps']:>8.0f}"
              f"{r['pct_copy']:>7.1f}{r['x_bf16']:>8.2f}{r['eager_us']:>10.1f}")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
