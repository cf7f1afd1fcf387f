"""ks.capture latency and ks.pipeline throughput on the GPU (issue #14: TARGETS.md P11, the pipeline).

Latency, batch 1 (P11: fuse + ks.capture <= 0.125x of eager): torchvision MobileNetV2 and ResNet-50
(random weights), bf16, channels_last (as python/kernelswap/bench/models.py), all in one run:
  eager          the torchvision model
  fuse           ks.swap(model, "fuse"), eager
  fuse+capture   ks.capture of the fused model (replays copy the input in and clone the output)
timed with triton.testing.do_bench (median, p20, p80 over CUDA events).

Throughput, ResNet-50 at batch 64 after "fuse", fed from pinned CPU batches (images/s, wall clock
over --batches batches, the median of --repeats runs):
  loop              for b in batches: model(b.to("cuda"))   (a blocking host-to-device copy per batch)
  pipeline          for out in ks.pipeline(model, batches)  (copy of batch i+1 during compute of i)
  pipeline+capture  the same, feeding a ks.capture runner
  gpu-resident      the batches already on the GPU: the ceiling (target: pipeline within 10% of it)

  python3 benchmarks/capture_quick.py [--models mobilenetv2 resnet50] [--out benchmarks/results]
Prints a table last; with --out (a folder, or a .csv path) writes the rows as CSV there.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import time

import torch

import kernelswap as ks
from kernelswap.bench.env import environment

CNNS = {"mobilenetv2": "mobilenet_v2", "resnet50": "resnet50"}
P11_TARGET = 0.125  # fuse + capture at batch 1, as a fraction of eager
PIPELINE_TARGET = 0.90  # pipeline throughput, as a fraction of the GPU-resident throughput
DTYPE = torch.bfloat16


def build(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the torchvision model, a copy of it after ks.swap(..., "fuse")), on the GPU, bf16, channels_last."""
    import torchvision
    model = getattr(torchvision.models, CNNS[name])(weights=None).eval()
    model = model.to("cuda", DTYPE, memory_format=torch.channels_last)
    fused = copy.deepcopy(model)
    ks.swap(fused, "fuse", probe=False)
    return model, fused


def images(batch: int, device="cuda") -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, device=device, dtype=DTYPE).contiguous(memory_format=torch.channels_last)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def latency_rows(name: str) -> list[dict]:
    from triton.testing import do_bench
    torch.manual_seed(0)
    x = images(1)
    eager, fused = build(name)
    runner = ks.capture(fused, x)
    with torch.inference_mode():
        checks = {"fuse": f"vs eager rel err {rel(fused(x), eager(x)):.1e}",
                  "fuse+capture": f"vs fuse rel err {rel(runner(x), fused(x)):.1e}"}
    variants = {"eager": lambda: eager(x), "fuse": lambda: fused(x), "fuse+capture": lambda: runner(x)}
    rows, base = [], None
    for variant, fn in variants.items():
        with torch.inference_mode():
            p50, p20, p80 = do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
        base = base or p50
        rows.append(dict(part="latency", model=name, batch=1, variant=variant, p50_us=p50 * 1e3, p20_us=p20 * 1e3,
                         p80_us=p80 * 1e3, images_per_s=1e3 / p50, vs_base=p50 / base,
                         note=checks.get(variant, "")))
    del eager, fused, runner
    return rows


def throughput(run, n_batches: int, batch: int, repeats: int) -> float:
    """Images/s of run() (which processes n_batches batches), median over repeats, after one warm-up run."""
    run()
    torch.cuda.synchronize()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        rates.append(n_batches * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def pipeline_rows(batch: int, n_batches: int, repeats: int, distinct: int = 4) -> list[dict]:
    torch.manual_seed(0)
    _, model = build("resnet50")
    host = [images(batch, "cpu").pin_memory() for _ in range(distinct)]  # pinned, as a DataLoader(pin_memory=True)
    resident = [h.to("cuda") for h in host]
    order = [i % distinct for i in range(n_batches)]
    runner = ks.capture(model, resident[0])

    def consume(outs):
        for _ in outs:
            pass

    with torch.inference_mode():
        expected = [model(resident[i]) for i in order[:distinct]]
        got = list(ks.pipeline(model, (host[i] for i in order[:distinct])))
        check = max(rel(g, e) for g, e in zip(got, expected))
        variants = {
            "loop": lambda: consume(model(host[i].to("cuda")) for i in order),
            "pipeline": lambda: consume(ks.pipeline(model, (host[i] for i in order))),
            "pipeline+capture": lambda: consume(ks.pipeline(runner, (host[i] for i in order))),
            "gpu-resident": lambda: consume(model(resident[i]) for i in order),
        }
        rates = {v: throughput(fn, n_batches, batch, repeats) for v, fn in variants.items()}
    ceiling = rates["gpu-resident"]
    rows = []
    for variant, rate in rates.items():
        rows.append(dict(part="throughput", model="resnet50", batch=batch, variant=variant, p50_us=batch / rate * 1e6,
                         p20_us="", p80_us="", images_per_s=rate, vs_base=rate / ceiling,
                         note=f"pipeline vs loop outputs max rel err {check:.1e}" if variant == "pipeline" else ""))
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r["part"] == "latency" and r["variant"] == "fuse+capture":
            met = "met" if r["vs_base"] <= P11_TARGET else "missed"
            out.append(f"P11 {r['model']} b1: fuse+capture {r['vs_base']:.3f}x of eager "
                       f"(target <= {P11_TARGET}x): {met}")
        if r["part"] == "throughput" and r["variant"] == "pipeline":
            met = "met" if r["vs_base"] >= PIPELINE_TARGET else "missed"
            out.append(f"pipeline: {r['vs_base']:.2f} of GPU-resident throughput (target >= {PIPELINE_TARGET}): {met}")
    return out


def table(rows: list[dict]) -> str:
    head = f"{'part':<10} {'model':<12} {'batch':>5} {'variant':<17} {'p50 us':>10} {'images/s':>10} {'ratio':>7}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio_of = "of eager" if r["part"] == "latency" else "of resident"
        lines.append(f"{r['part']:<10} {r['model']:<12} {r['batch']:>5} {r['variant']:<17} {r['p50_us']:>10.1f} "
                     f"{r['images_per_s']:>10.1f} {r['vs_base']:>7.3f}  ({ratio_of}) {r['note']}")
    return "\n".join(lines)


def write_csv(rows: list[dict], out: str) -> str:
    path = out if out.endswith(".csv") else os.path.join(out, "capture_quick.csv")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    env = environment(torch.device("cuda"))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(env))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **env})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CNNS), choices=list(CNNS))
    ap.add_argument("--batch", type=int, default=64, help="pipeline batch size (ResNet-50)")
    ap.add_argument("--batches", type=int, default=24, help="batches per throughput run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--out", help="a folder (writes capture_quick.csv there) or a .csv path")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("capture_quick.py needs a CUDA device")
    rows = []
    for name in args.models:
        rows += latency_rows(name)
        print(table(rows[-3:]), flush=True)
    if not args.no_pipeline:
        rows += pipeline_rows(args.batch, args.batches, args.repeats)
    if args.out:
        print(f"wrote {write_csv(rows, args.out)}")
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(table(rows))
    print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
