"""Host time per call: how much a kernelswap layer costs the CPU, against the layer it replaces.

    python benchmarks/overhead_quick.py [--calls N] [--profile FILE]

For layers whose GPU work is a few microseconds (decode-size linears at M = 1 and 16, small conv layers,
batch-1 CNNs), the time Python and the dispatcher spend per call decides the speed. For
each swapped module at a small shape this prints, per call:
  launch_us  host time to issue the call (the loop, no synchronization inside it)
  total_us   the same loop including waiting for the GPU at the end
for the kernelswap module, the backend function it dispatches to called directly (the
kernel and its launcher, no checks or dispatch), and the PyTorch layer it replaced. With
--profile, a cProfile listing (top functions by own time) of the kernelswap calls is
written to FILE, so the remaining overhead can be read function by function.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from torch import nn

import kernelswap as ks
from kernelswap.ops import backend


DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def per_call_us(fn, calls: int) -> tuple[float, float]:
    for _ in range(20):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / calls * 1e6, (t2 - t0) / calls * 1e6


def linear_cases(dtype):
    for recipe, m, k, n in (("int8", 1, 4096, 4096), ("int8-weight", 1, 4096, 4096), ("int4", 1, 4096, 4096),
                            ("int4", 16, 4096, 4096), ("sparse24", 1, 4096, 4096), ("sparse24-int8", 1, 4096, 4096)):
        dense = nn.Linear(k, n, bias=True).to(DEVICE, dtype).eval()
        model = nn.Sequential(nn.Linear(k, n, bias=True)).to(DEVICE, dtype).eval()
        model[0].load_state_dict(dense.state_dict())
        ks.swap(model, recipe, probe=False)
        x = torch.randn(m, k, device=DEVICE, dtype=dtype)
        yield f"{recipe} M={m} {k}x{n}", model[0], dense, (x,)


def conv_cases(dtype):
    # A ResNet-50 bottleneck layer (1x1, 256 -> 64) and a MobileNetV2 depthwise 3x3, batch 1.
    for label, c_in, c_out, k, groups, hw in (("conv 1x1 256->64 56x56", 256, 64, 1, 1, 56),
                                               ("conv dw3x3 144 56x56", 144, 144, 3, 144, 56)):
        conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False)
        bn = nn.BatchNorm2d(c_out)
        model = nn.Sequential(conv, bn, nn.ReLU()).to(DEVICE, dtype).eval()
        model = model.to(memory_format=torch.channels_last)
        folded = torch.nn.utils.fusion.fuse_conv_bn_eval(model[0], model[1])
        baseline = nn.Sequential(folded, nn.ReLU())
        ks.swap(model, "fuse", probe=False)
        x = torch.randn(1, c_in, hw, hw, device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)
        layer = next(m for m in model.modules() if isinstance(m, ks.nn.ConvBNAct2d))
        yield label, layer, baseline, (x,)


def direct(layer, args):
    """(the backend function the dispatcher picks for this layer's call, bound to its arguments, backend)."""
    captured = []
    real = backend._choose

    def spy(op, device, op_args):
        impl, lasting = real(op, device, op_args)
        captured.append((impl, op_args))
        return impl, lasting

    backend.clear_plans()  # so the call below chooses again, through the spy
    backend._choose = spy
    try:
        layer(*args)
    finally:
        backend._choose = real
    if not captured:
        return None, "none"
    calls = list(captured)  # int8: quantize, then the GEMM; run them all
    return (lambda: [impl.fn(*a) for impl, a in calls]), "+".join(impl.backend for impl, _ in calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--profile", default="")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (reference path)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    dtype = torch.bfloat16
    rows, profiled = [], []
    with torch.no_grad():
        for label, layer, baseline, inputs in list(linear_cases(dtype)) + list(conv_cases(dtype)):
            ours = per_call_us(lambda: layer(*inputs), args.calls)
            fn, backend = direct(layer, inputs)
            kernel = per_call_us(fn, args.calls) if fn else (float("nan"), float("nan"))
            base = per_call_us(lambda: baseline(*inputs), args.calls)
            rows.append((label, backend, ours, kernel, base))
            profiled.append((label, lambda layer=layer, inputs=inputs: layer(*inputs)))
    print(f"{'layer':28s} {'backend':14s} {'ours launch/total':>20s} {'direct':>16s} {'replaced layer':>16s}  (us/call)")
    for label, backend, ours, kernel, base in rows:
        print(f"{label:28s} {backend:14s} {ours[0]:9.1f} {ours[1]:9.1f} {kernel[0]:7.1f} {kernel[1]:7.1f}"
              f" {base[0]:7.1f} {base[1]:7.1f}")
    if args.profile:
        out = io.StringIO()
        with torch.no_grad():
            for label, fn in profiled:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.calls):
                    fn()
                prof.disable()
                sync()
                out.write(f"==== {label}: {args.calls} calls\n")
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
        with open(args.profile, "w") as f:
            f.write(out.getvalue())


if __name__ == "__main__":
    main()
