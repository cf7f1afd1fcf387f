"""Per-layer timings of conv + BN + activation (TARGETS.md P9): ours vs eager vs BN-folded cuDNN.

Providers, all NHWC (channels_last), timed in the same run with triton.testing.do_bench
(median, p20, p80 over CUDA events; do_bench flushes L2 before every call):
  eager      nn.Conv2d -> nn.BatchNorm2d (eval) -> activation [-> + residual before it]
  folded     the "torch" backend: cuDNN conv with BN folded into weight and bias, then epilogue
  triton     our kernel alone (implicit GEMM or depthwise launcher, prepared weight)
  dispatched kernelswap.ops.conv_bn_act, automatic backend choice (what a swapped model gets)
Every layer's outputs are also checked against an fp32 computation of the same folded layer.

  python3 benchmarks/conv_triton_quick.py --batch 64 1 --csv results.csv
GPU session (one call; install with `python3 -m pip`: a bare `pip` there may belong to another
Python, and kernelswap then does not import):
  KERNELSWAP_BUILD_CUDA=off python3 -m pip install --no-build-isolation --no-deps -e . -q &&
  python3 -c "import kernelswap" && python3 benchmarks/conv_triton_quick.py --batch 64 1 --budget-s 120
      --csv $OUT/conv_triton_quick.csv > $OUT/bench.log 2>&1;
  timeout 100 python3 -m pytest -q -rs tests/test_conv_triton.py > $OUT/test.log 2>&1; tail -40 $OUT/*.log
Prints a table last. --budget-s stops starting new layers once the run has taken that long
(the first call at each shape compiles and autotunes), so a time-limited run still reports.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import time

import torch
import torch.nn as nn

import kernelswap as ks
from kernelswap import packing
from kernelswap.bench.env import commit
from kernelswap.ops import conv, conv_triton
from kernelswap.ops.conv_torch import _conv_bn_act_torch

# The same shapes as tests/test_conv_triton.py LAYERS (first eight), plus two deeper ResNet-50 layers.
LAYERS = {
    # name: ((C_in, C_out, kernel, stride, padding, groups, H), activation, residual)
    "r50_stem7x7_s2": ((3, 64, 7, 2, 3, 1, 224), "relu", False),
    "r50_1x1_64to256_res": ((64, 256, 1, 1, 0, 1, 56), "relu", True),
    "r50_3x3_64": ((64, 64, 3, 1, 1, 1, 56), "relu", False),
    "r50_3x3_128_s2": ((128, 128, 3, 2, 1, 1, 56), "relu", False),
    "mbv2_1x1_expand_24to144": ((24, 144, 1, 1, 0, 1, 56), "relu6", False),
    "mbv2_1x1_project_144to24_res": ((144, 24, 1, 1, 0, 1, 56), "identity", True),
    "mbv2_dw3x3_144": ((144, 144, 3, 1, 1, 144, 56), "relu6", False),
    "mbv2_dw3x3_144_s2": ((144, 144, 3, 2, 1, 144, 56), "relu6", False),
    "r50_1x1_1024to256_14": ((1024, 256, 1, 1, 0, 1, 14), "relu", False),
    "r50_3x3_512_7": ((512, 512, 3, 1, 1, 1, 7), "relu", False),
}
ACT_MODULES = {"relu": nn.ReLU, "relu6": nn.ReLU6, "identity": nn.Identity, "silu": nn.SiLU,
               "hardswish": nn.Hardswish}
# bf16 dense matmul ceiling measured on the reference H100 (TARGETS.md); "% peak" is against it.
BF16_PEAK_TFLOPS = 724.0


class Eager(nn.Module):
    def __init__(self, conv, bn, act):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x, res=None):
        y = self.bn(self.conv(x))
        return self.act(y if res is None else y + res)


def make_layer(spec, activation, dtype, device):
    c_in, c_out, k, s, p, g, _ = spec
    conv = nn.Conv2d(c_in, c_out, k, s, p, groups=g, bias=False)
    bn = nn.BatchNorm2d(c_out)
    with torch.no_grad():  # non-trivial statistics so folding changes the weights
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    bn.eval()
    w, b = packing.fold_bn(conv.weight.detach(), None, bn)  # in float64 inside, before the cast to dtype
    eager = Eager(conv, bn, ACT_MODULES[activation]()).eval().to(device, dtype).to(memory_format=torch.channels_last)
    return eager, w.to(device, dtype), b.to(device, dtype)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def meta() -> dict:
    import triton
    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "commit": commit(),
            "date": datetime.date.today().isoformat()}


def bench_layer(name, batch, dtype, device):
    from triton.testing import do_bench
    spec, activation, residual = LAYERS[name]
    c_in, c_out, k, s, p, g, h = spec
    eager, w, b = make_layer(spec, activation, dtype, device)
    x = torch.randn(batch, c_in, h, h, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    ho = (h + 2 * p - k) // s + 1
    res = None
    if residual:
        res = torch.randn(batch, c_out, ho, ho, device=device, dtype=dtype)
        res = res.contiguous(memory_format=torch.channels_last)
    args = (x, w, b, [s, s], [p, p], [1, 1], g, activation, res)
    providers = {
        "eager": lambda: eager(x, res),
        "folded": lambda: _conv_bn_act_torch(*args),
        "triton": lambda: conv_triton.conv_bn_act_triton(*args),
        "dispatched": lambda: ks.ops.conv_bn_act(*args),
    }
    with torch.no_grad():
        ref = _conv_bn_act_torch(x.float(), w.float(), b.float(), *args[3:8], None if res is None else res.float())
        errs = {prov: rel(fn(), ref) for prov, fn in providers.items()}
        times = {prov: do_bench(fn, quantiles=[0.5, 0.2, 0.8]) for prov, fn in providers.items()}
    flops = 2.0 * batch * ho * ho * c_out * (c_in // g) * k * k
    key = conv.shape_key(*args)
    pick = "-" if key not in conv_triton._PICKS else "cudnn" if conv_triton._PICKS[key] else "triton"
    return times, errs, flops, pick


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layers", nargs="*", default=list(LAYERS))
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--csv", default="")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    info = meta()
    t0 = time.time()
    rows, table = [], []
    for batch in a.batch:
        for name in a.layers:
            if time.time() - t0 > a.budget_s:
                table.append(f"{name:30s} N={batch:<3d} skipped: time budget spent")
                continue
            times, errs, flops, pick = bench_layer(name, batch, dtype, "cuda")
            for prov, (p50, p20, p80) in times.items():
                rows.append({"op": "conv_bn_act", "provider": prov, "layer": name, "batch": batch,
                             "dtype": a.dtype, "p50_ms": p50, "p20_ms": p20, "p80_ms": p80,
                             "tflops": flops / p50 / 1e9, "pct_bf16_peak": 100 * flops / p50 / 1e9 / BF16_PEAK_TFLOPS,
                             "rel_err_vs_fp32": errs[prov], **info})
            e, f, t, d = (times[k][0] for k in ("eager", "folded", "triton", "dispatched"))
            best = min(e, f)
            table.append(f"{name:30s} N={batch:<3d} eager {e * 1e3:8.1f} folded {f * 1e3:8.1f} triton {t * 1e3:8.1f} "
                         f"disp {d * 1e3:8.1f} us | triton x{e / t:5.2f} disp x{e / d:5.2f} vs eager | "
                         f"pick {pick:6s} | disp/best {d / best:4.2f} | err tri {errs['triton']:.1e} "
                         f"fold {errs['folded']:.1e} eager {errs['eager']:.1e}")
            print(table[-1], flush=True)
    if a.csv and rows:
        with open(a.csv, "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    print(f"\n{info}\nus per call, median; x = eager / provider (higher is faster); "
          f"disp/best = dispatched / min(eager, folded) (<= 1 is 'never slower')")
    for line in table:
        print(line)
    for batch in a.batch:
        sp = [r_e["p50_ms"] / r_d["p50_ms"] for r_e, r_d in zip(
            [r for r in rows if r["provider"] == "eager" and r["batch"] == batch],
            [r for r in rows if r["provider"] == "dispatched" and r["batch"] == batch])]
        if sp:
            print(f"N={batch}: median dispatched speedup over eager x{statistics.median(sp):.2f} "
                  f"over {len(sp)} layers (target P9: >= 1.25 at N=64)")


if __name__ == "__main__":
    main()
