"""Plots from a benchmark CSV (never drawn inside the timing run).

    python benchmarks/plot.py benchmarks/results/bench.csv [--out DIR] [--dtype bf16]

Writes into DIR (default: the CSV's folder):
  speedup_<op>.png   per linear op: speedup over the dense layer (torch-dense) vs M,
                     one panel per (K, N), one line per provider; above 1 is faster
  conv_speedup.png   per conv layer: ours-auto, bn-folded and compile against eager, N = 1 and 64
  roofline.png       achieved TFLOP/s vs arithmetic intensity, under the measured peaks
  models.png         whole models: speedup of each variant over eager / bf16
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kernelswap.bench.report import read_csv  # noqa: E402


def _ok(rows, dtype=None):
    return [r for r in rows if r["status"] == "ok" and (dtype is None or r["dtype"] == dtype)]


def _times(rows):
    """(op, shape) -> provider -> p50_us."""
    out = defaultdict(dict)
    for r in rows:
        out[(r["op"], r["shape"])][r["provider"]] = r["p50_us"]
    return out


def plot_linear(rows, out_dir, dtype) -> list[str]:
    times = _times(_ok(rows, dtype))
    written = []
    ops = sorted({op for op, shape in times if shape.count("x") == 2 and not op.startswith(("peak", "model"))})
    for op in ops:
        panels = defaultdict(lambda: defaultdict(list))  # (K, N) -> provider -> [(M, speedup)]
        for (o, shape), by in times.items():
            if o != op or "torch-dense" not in by:
                continue
            m, k, n = (int(v) for v in shape.split("x"))
            for provider, us in by.items():
                if provider != "torch-dense":
                    panels[(k, n)][provider].append((m, by["torch-dense"] / us))
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
        for ax, ((k, n), lines) in zip(axes[0], sorted(panels.items())):
            for provider, pts in sorted(lines.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        linewidth=2.5 if provider == "ours-auto" else 1, label=provider)
            ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_title(f"K={k}, N={n}", fontsize=9)
            ax.set_xlabel("M (tokens)")
        axes[0][0].set_ylabel("speedup over torch-dense")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"{op} ({dtype})")
        written.append(_save(fig, out_dir, f"speedup_{op}.png"))
    return written


def plot_conv(rows, out_dir, dtype) -> list[str]:
    times = {shape: by for (op, shape), by in _times(_ok(rows, dtype)).items() if op == "conv_bn_act"}
    shapes = [s for s in times if "eager" in times[s]]
    if not shapes:
        return []
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.25 * len(shapes)), 7), squeeze=False)
    for ax, batch in zip(axes[:, 0], ("n1-", "n64-")):
        layer = [s for s in shapes if s.startswith(batch)]
        for i, provider in enumerate(("ours-auto", "bn-folded", "compile")):
            xs = [j + 0.27 * i for j, s in enumerate(layer) if provider in times[s]]
            ys = [times[s]["eager"] / times[s][provider] for s in layer if provider in times[s]]
            ax.bar(xs, ys, width=0.27, label=provider)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(layer)), [s[len(batch):] for s in layer], rotation=90, fontsize=5)
        ax.set_ylabel(f"speedup over eager, N={batch[1:-1]}")
        ax.legend(fontsize=7)
    return [_save(fig, out_dir, "conv_speedup.png")]


def plot_roofline(rows, out_dir, dtype) -> list[str]:
    peaks = {r["provider"]: r for r in rows if r["kind"] == "peak" and r["status"] == "ok"}
    pts = [r for r in _ok(rows, dtype) if r.get("tflops") and r.get("gbps") and r["kind"] != "peak"]
    if not pts:
        return []
    fig, ax = plt.subplots(figsize=(7, 5))
    for kind, marker in (("ours", "o"), ("baseline", "x"), ("peer", "^")):
        sel = [r for r in pts if r["kind"] == kind]
        ax.scatter([r["tflops"] * 1e3 / r["gbps"] for r in sel], [r["tflops"] for r in sel], marker=marker,
                   s=14, label=kind)
    xs = [r["tflops"] * 1e3 / r["gbps"] for r in pts]
    lo, hi = min(xs) / 2, max(xs) * 2
    bw = peaks.get("copy", {}).get("gbps")
    for name in ("bf16_mm", "int_mm"):
        top = peaks.get(name, {}).get("tflops")
        if bw and top:
            ridge = top * 1e3 / bw
            ax.plot([lo, ridge, hi], [bw * lo / 1e3, top, top], linestyle="--", linewidth=1,
                    label=f"{name} {top:.3g} TFLOP/s, copy {bw:.3g} GB/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOP per byte (weights + activations)")
    ax.set_ylabel("TFLOP/s (dense-equivalent)")
    ax.legend(fontsize=7)
    ax.set_title(f"achieved vs measured peaks ({dtype})")
    return [_save(fig, out_dir, "roofline.png")]


def plot_models(rows, out_dir) -> list[str]:
    ok = [r for r in _ok(rows) if r["op"].startswith("model:")]
    base = {(r["op"], r["shape"]): r["p50_us"] for r in ok if r["provider"] in ("eager", "bf16")}
    bars = [(f"{r['op'][6:]} {r['shape']}", r["provider"], base[(r["op"], r["shape"])] / r["p50_us"])
            for r in ok if (r["op"], r["shape"]) in base and r["provider"] not in ("eager", "bf16")]
    if not bars:
        return []
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(bars) + 1.5))
    ax.barh(range(len(bars)), [b[2] for b in bars])
    ax.set_yticks(range(len(bars)), [f"{b[0]}: {b[1]}" for b in bars], fontsize=6)
    ax.axvline(1.0, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("speedup over eager (CNNs) / bf16 (decoder)")
    return [_save(fig, out_dir, "models.png")]


def _save(fig, out_dir, name) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the CSV's folder)")
    p.add_argument("--dtype", default="bf16")
    args = p.parse_args(argv)
    rows = read_csv(args.csv)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out_dir, exist_ok=True)
    written = (plot_linear(rows, out_dir, args.dtype) + plot_conv(rows, out_dir, args.dtype)
               + plot_roofline(rows, out_dir, args.dtype) + plot_models(rows, out_dir))
    print("\n".join(written) if written else "no ok rows to plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
