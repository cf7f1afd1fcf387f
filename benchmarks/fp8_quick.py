"""FP8 W8A8 (kernelswap "fp8" / "sparse24-fp8") against cuBLAS bf16 and torch._scaled_mm, same run.

    python3 benchmarks/fp8_quick.py --out fp8_quick.csv [--no-compile]

Needs an sm_90 GPU and a kernelswap._C built with 9.0a and CUTLASS (else our rows are skipped
with the dispatcher's reason). Shapes (M x K x N): P1 4096x8192x8192 and decode 16x8192x28672.
Providers, each end to end on bf16 activations with a bias:
  bf16            F.linear (cuBLAS), the layer being replaced
  ours-fp8        kernelswap.ops.fp8_linear, cuda backend forced: per-token e4m3 quantize kernel
                  + CUTLASS e4m3 GEMM with the scales and bias in its epilogue
  ours-fp8-fast   ours-fp8 with fast_accum=True (FP8 fast accumulation from M = 65)
  ours-2:4-fp8    kernelswap.ops.sparse24_fp8_linear (the same on a 2:4-pruned weight)
  scaled_mm       eager per-token e4m3 quantization + torch._scaled_mm row-wise (cuBLASLt), bias fused
  scaled_mm-fast  the same with use_fast_accum=True
  scaled_mm-compiled  the same function under torch.compile (quantization fused by Inductor)
  torchao-float8  torchao Float8DynamicActivationFloat8WeightConfig(PerRow) under torch.compile, if importable
Each provider cycles through enough weight copies that they cannot sit in L2; time is
triton.testing.do_bench's median (CUDA events, L2 cleared before each call). x_bf16 is the time
over bf16's, x_scaled_mm over eager scaled_mm's at the same shape; sqnr_db is the output's SQNR
against x @ W.T + b in fp32 with the provider's own (dequantized, 2:4-decompressed) weight, i.e.
the error of the activation quantization and the GEMM alone. TFLOP/s count 2 M N K (dense-equivalent
for 2:4). Prints a table; --out writes the CSV.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import math

import torch
import torch.nn.functional as F
import triton

import kernelswap
from kernelswap import packing
from kernelswap.bench.providers.fp8 import scaled_mm_linear

SHAPES = [(4096, 8192, 8192), (16, 8192, 28672)]  # (M, K, N)
L2_BYTES = 60 * 2**20
ROTATE_BYTES = 4 * L2_BYTES


def copies(nbytes: int) -> int:
    return max(2, min(16, -(-ROTATE_BYTES // max(nbytes, 1))))


def nbytes(args) -> int:
    return sum(t.numel() * t.element_size() for t in args if isinstance(t, torch.Tensor))


def time_rotating(fn, weights) -> float:
    """Median ms of fn(*weights[i]) with i cycling, so each call reads weights not in L2."""
    it = itertools.cycle(weights)
    return triton.testing.do_bench(lambda: fn(*next(it)), warmup=25, rep=200)


def weight_sets(k: int, n: int, dtype):
    """{provider: (fn(x, *w), [w, ...])}: `copies` independent weights per provider."""
    def w32():
        return torch.randn(n, k, device="cuda") / math.sqrt(k)

    def b32():
        return torch.randn(n, device="cuda") * 0.1

    def dense():
        return w32().to(dtype), b32().to(dtype)

    def fp8():
        w_q, w_s = packing.quantize_fp8(w32())
        args = (w_q, w_s, b32().to(dtype))
        kernelswap.ops.prepare_weights("fp8_linear", *args)
        return args

    def sparse_fp8():
        w_q, w_s = packing.quantize_fp8(packing.prune_24(w32()))
        values, meta = packing.compress_24(w_q.float())
        args = (values.to(torch.float8_e4m3fn), meta, w_s, b32().to(dtype))
        kernelswap.ops.prepare_weights("sparse24_fp8_linear", *args)
        return args

    def scaled():
        w_q, w_s = packing.quantize_fp8(w32())
        return w_q, w_s[None, :].contiguous(), b32().to(dtype)

    makers = {"bf16": (F.linear, dense), "ours-fp8": (kernelswap.ops.fp8_linear, fp8),
              "ours-fp8-fast": (lambda x, w, s, b: kernelswap.ops.fp8_linear(x, w, s, b, True), fp8),
              "ours-2:4-fp8": (kernelswap.ops.sparse24_fp8_linear, sparse_fp8),
              "scaled_mm": (scaled_mm_linear, scaled),
              "scaled_mm-fast": (lambda x, w, s, b: scaled_mm_linear(x, w, s, b, True), scaled)}
    out = {}
    for name, (fn, make) in makers.items():
        first = make()
        out[name] = (fn, [first] + [make() for _ in range(copies(nbytes(first)) - 1)])
    return out


def sqnr(ref: torch.Tensor, y: torch.Tensor) -> float:
    noise = (ref.double() - y.double()).norm().item()
    return float("inf") if noise == 0 else 20 * math.log10(ref.double().norm().item() / noise)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="CSV path")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd providers")
    opts = ap.parse_args()
    dtype = torch.bfloat16
    gpu = torch.cuda.get_device_name()
    rows = []
    for m, k, n in SHAPES:
        torch.manual_seed(0)
        sets = weight_sets(k, n, dtype)
        if not opts.no_compile:
            sets["scaled_mm-compiled"] = (torch.compile(scaled_mm_linear, dynamic=False), sets["scaled_mm"][1])
            try:
                from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
                lin = torch.nn.Linear(k, n, device="cuda", dtype=dtype)
                quantize_(lin, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
                sets["torchao-float8"] = (torch.compile(lambda x, lin: lin(x)), [(lin,)])  # one module: guards
            except Exception as e:  # noqa: BLE001 - absent or API moved: say so
                print(f"skip torchao-float8: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        x = torch.randn(m, k, device="cuda").to(dtype)
        times = {}
        for name, (fn, weights) in sets.items():
            try:  # ours with the cuda backend forced: an error (with the reason) instead of the reference
                with kernelswap.use_backend("cuda") if name.startswith("ours") else contextlib.nullcontext():
                    y = fn(x, *weights[0])  # raises where this provider cannot serve the call
                    ms = time_rotating(lambda *w, fn=fn: fn(x, *w), weights)
            except Exception as e:  # noqa: BLE001 - a provider that cannot run gets a skip line, not a row
                print(f"skip {name} {m}x{k}x{n}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                continue
            times[name] = ms
            q = float("nan")
            if name != "torchao-float8":  # its weight is a different random layer
                w0 = weights[0]
                ref = F.linear(x.float(), *_float_layer(name, w0, k))
                q = sqnr(ref, y)
            rows.append(dict(provider=name, M=m, K=k, N=n, us=ms * 1e3, TFLOPs=2 * m * k * n / (ms * 1e-3) / 1e12,
                             sqnr_db=q))
        for r in rows:
            if (r["M"], r["K"], r["N"]) == (m, k, n):
                r["x_bf16"] = r["us"] / 1e3 / times["bf16"] if "bf16" in times else float("nan")
                r["x_scaled_mm"] = r["us"] / 1e3 / times["scaled_mm"] if "scaled_mm" in times else float("nan")
        del sets
        torch.cuda.empty_cache()
    with open(opts.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + ["gpu", "dtype"])
        writer.writeheader()
        for r in rows:
            writer.writerow(dict(r, gpu=gpu, dtype="bf16"))
    print(f"\n{gpu}\n{'provider':<20}{'M':>6}{'K':>7}{'N':>7}{'us':>10}{'TFLOP/s':>9}{'x bf16':>8}{'x smm':>7}{'SQNR':>7}")
    for r in rows:
        print(f"{r['provider']:<20}{r['M']:>6}{r['K']:>7}{r['N']:>7}{r['us']:>10.1f}{r['TFLOPs']:>9.0f}"
              f"{r['x_bf16']:>8.2f}{r['x_scaled_mm']:>7.2f}{r['sqnr_db']:>7.1f}")
    print(f"wrote {opts.out}")


def _float_layer(name: str, w, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) in fp32 that a provider's weights stand for (dequantized; 2:4 decompressed)."""
    if name == "bf16":
        return w[0].float(), w[1].float()
    if name == "ours-2:4-fp8":
        from kernelswap.ops.fp8 import dense_fp8_weight
        return dense_fp8_weight(w[0], w[1], k).float() * w[2][:, None], w[3].float()
    w_q, w_s, b = w
    return w_q.float() * w_s.reshape(-1, 1), b.float()


if __name__ == "__main__":
    main()
