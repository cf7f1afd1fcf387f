"""Host time per call: what a kernelswap layer costs the CPU, against the layer it replaced.

    python benchmarks/overhead_quick.py [--calls 2000] [--csv FILE] [--profile FILE]

For every swapped module (Int8Linear in both modes, Int4Linear, Sparse24Linear in both
modes, Fp8Linear with and without fast_accum at M = 1, 16 and 128, bf16, K = N = 4096; ConvBNAct2d on a ResNet-50 1x1 and a
MobileNetV2 depthwise layer at batch 1), next to the module it replaced, in one run:
  host_us    the CPU time a call costs: wall time per call of --calls eager calls issued in
             chunks of 100, each chunk behind a GPU sleep (torch.cuda._sleep) that outlasts its
             issue, so the GPU never waits for the host and the launch queue neither drains nor
             fills (a chunk the GPU caught up with is issued again behind a longer sleep); ours
             and the replaced layer's alternate five times, the best of each kept
  loop_us    the same without the sleep: a plain loop of --calls calls, which the GPU work paces
             where it outlasts the host time (M = 128: gpu_us is 13-38 us there)
M = 1 is also timed with x of shape (1, 1, K), the layout a Hugging Face decode step passes.
  gpu_us     the same call replayed from a CUDA graph, per replay (no host time at all)
  ratio      ours / the replaced layer's host_us: the target is <= 1
With --profile, a cProfile listing of each kernelswap module's calls (top functions by own
time) is written to FILE, so what is left can be read function by function.
"""
from __future__ import annotations

import argparse
import cProfile
import csv
import io
import pstats
import time

import torch
from torch import nn

import kernelswap as ks
from kernelswap.bench.timing import capture_graph, replay_ms

RECIPES = ("int8", "int8-weight", "int4", "sparse24", "sparse24-int8", "fp8", ks.Fp8(fast_accum=True))


def host_us(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


CHUNK = 100  # calls issued behind one GPU sleep: at most 3 launches each, well inside the launch queue


def hidden_host_us(fn, calls: int) -> float:
    """host_us of the module docstring: per-call wall time of `calls` calls, issued CHUNK at a time
    behind a GPU sleep of 150 us a call to start with (several times what a call here takes to
    issue). A chunk the GPU finished its sleep before is not counted: the sleep doubles and the
    chunk is issued again."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    cycles = int(CHUNK * 150e-6 * 2e9)  # the H200 runs near 2 GHz; a slower clock only sleeps longer
    spent, done = 0.0, 0
    while done < calls:
        torch.cuda._sleep(cycles)
        t0 = time.perf_counter()
        for _ in range(CHUNK):
            fn()
        t1 = time.perf_counter()
        caught_up = torch.cuda.current_stream().query()
        torch.cuda.synchronize()
        if caught_up:
            if cycles > 1 << 34:
                raise RuntimeError("the GPU keeps finishing its sleep before the calls are issued")
            cycles *= 2
            continue
        spent += t1 - t0
        done += CHUNK
    return spent / done * 1e6


def paired_host_us(ours, theirs, calls: int, chunks: int = 5, measure=host_us) -> tuple[float, float]:
    """host_us of two callables taken in alternating chunks of `calls` calls each, the best chunk
    of each kept: a host whose speed drifts (the H200 machine's does, by up to 2x over seconds)
    then weighs on both alike, and the least disturbed chunk is each one's figure."""
    a, b = [], []
    for _ in range(chunks):
        a.append(measure(ours, calls))
        b.append(measure(theirs, calls))
    return min(a), min(b)


def graph_us(fn, reps: int = 200) -> float:
    """Per-replay time of a CUDA graph of 10 calls of fn (so launch gaps are amortised)."""
    g, _ = capture_graph(lambda: [fn() for _ in range(10)])
    return replay_ms(g, reps) * 1e3 / 10


def linear_cases(dtype, k=4096, n=4096):
    # M tokens as x (M, K), and the decode step's layout in a Hugging Face model: x (1, 1, K).
    for m, lead, tag in ((1, (1,), ""), (1, (1, 1), " x(1,1,K)"), (16, (16,), ""), (128, (128,), "")):
        dense = nn.Linear(k, n, bias=True).to("cuda", dtype).eval()
        x = torch.randn(*lead, k, device="cuda", dtype=dtype)
        for recipe in RECIPES:
            model = nn.Sequential(nn.Linear(k, n, bias=True)).to("cuda", dtype).eval()
            model[0].load_state_dict(dense.state_dict())
            ks.swap(model, recipe, probe=False)
            yield f"{recipe} M={m} {k}x{n}{tag}", model[0], dense, (x,)


def conv_cases(dtype):
    # A ResNet-50 bottleneck layer (1x1, 256 -> 64) and a MobileNetV2 depthwise 3x3, batch 1.
    for label, c_in, c_out, k, groups, hw in (("fuse 1x1 256->64 56x56 b1", 256, 64, 1, 1, 56),
                                               ("fuse dw3x3 144 56x56 b1", 144, 144, 3, 144, 56)):
        conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False)
        bn = nn.BatchNorm2d(c_out)
        eager = nn.Sequential(conv, bn, nn.ReLU()).to("cuda", dtype).eval().to(memory_format=torch.channels_last)
        model = nn.Sequential(conv, bn, nn.ReLU())
        model.load_state_dict(eager.state_dict())
        model = model.to("cuda", dtype).eval().to(memory_format=torch.channels_last)
        ks.swap(model, "fuse", probe=False)
        x = torch.randn(1, c_in, hw, hw, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        yield label, model, eager, (x,)


def served_by(layer, inputs) -> str:
    """The backend(s) whose implementation this layer's call runs (its runners dropped first, so
    the call below decides again; KernelswapModule.served_by)."""
    swapped = [m for m in layer.modules() if isinstance(m, ks.nn.KernelswapModule)]
    for m in swapped:
        m.prepare()
    layer(*inputs)
    return "+".join(b for b in (m.served_by() for m in swapped) if b) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--csv", default="")
    ap.add_argument("--profile", default="")
    args = ap.parse_args()
    dtype = torch.bfloat16
    rows, profiled = [], []
    with torch.no_grad():
        for label, layer, baseline, inputs in list(linear_cases(dtype)) + list(conv_cases(dtype)):
            backend = served_by(layer, inputs)
            ours, base = paired_host_us(lambda: layer(*inputs), lambda: baseline(*inputs), args.calls,
                                        measure=hidden_host_us)
            loop_ours, loop_base = paired_host_us(lambda: layer(*inputs), lambda: baseline(*inputs), args.calls)
            g_ours, g_base = graph_us(lambda: layer(*inputs)), graph_us(lambda: baseline(*inputs))
            rows.append(dict(layer=label, backend=backend, ours_host_us=ours, replaced_host_us=base,
                             ratio=ours / base, ours_gpu_us=g_ours, replaced_gpu_us=g_base,
                             ours_loop_us=loop_ours, replaced_loop_us=loop_base))
            profiled.append((label, lambda layer=layer, inputs=inputs: layer(*inputs)))
            del layer, baseline
    print(f"{'layer':30s} {'backend':14s} {'host us: ours':>14s} {'replaced':>9s} {'ratio':>6s} "
          f"{'graph us: ours':>15s} {'replaced':>9s} {'loop us: ours':>14s} {'replaced':>9s}")
    for r in rows:
        print(f"{r['layer']:30s} {r['backend']:14s} {r['ours_host_us']:14.1f} {r['replaced_host_us']:9.1f} "
              f"{r['ratio']:6.2f} {r['ours_gpu_us']:15.1f} {r['replaced_gpu_us']:9.1f} "
              f"{r['ours_loop_us']:14.1f} {r['replaced_loop_us']:9.1f}")
    meets = sum(r["ratio"] <= 1.0 for r in rows)
    print(f"host time at or below the replaced layer's: {meets} of {len(rows)}  "
          f"({torch.cuda.get_device_name()}, torch {torch.__version__}, {args.calls} calls)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if args.profile:
        out = io.StringIO()
        with torch.no_grad():
            for label, fn in profiled:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(500):
                    fn()
                prof.disable()
                torch.cuda.synchronize()
                out.write(f"==== {label}: 500 calls\n")
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
        with open(args.profile, "w") as f:
            f.write(out.getvalue())


if __name__ == "__main__":
    main()
