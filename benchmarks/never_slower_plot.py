"""The never-slower plot, from benchmarks/never_slower.py's CSV (never drawn in the timing run).

    python benchmarks/never_slower_plot.py DIR/never_slower.csv [--mode graph|eager] [--out PNG]

One panel per layer size (K x N): time over the bf16 nn.Linear's against M (log scale), one
line per recipe as the dispatcher serves it (provider "auto"), cuSPARSELt dashed beside 2:4;
the line at 1.0 is "as fast as bf16", below it is faster. Writes DIR/never_slower_<mode>.png
unless --out names another file.
"""
from __future__ import annotations

import argparse
import csv
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(rows: list[dict], mode: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """shape -> line label -> [(M, x_bf16)] sorted by M, from the rows with a ratio."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        if r["mode"] != mode or r["x_bf16"] in ("", None) or r["provider"] not in ("auto", "cusparselt"):
            continue
        label = r["recipe"] if r["provider"] == "auto" else "cuSPARSELt (2:4)"
        out.setdefault(r["shape"], {}).setdefault(label, []).append((int(r["m"]), float(r["x_bf16"])))
    for lines in out.values():
        for points in lines.values():
            points.sort()
    return out


def plot(rows: list[dict], path: str, mode: str = "graph") -> str:
    data = series(rows, mode)
    if not data:
        raise SystemExit(f"no {mode}-mode ratios in the CSV: nothing to plot")
    cols = min(3, len(data))
    nrows = math.ceil(len(data) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, (shape, lines) in zip(axes.flat, data.items()):
        for label, points in lines.items():
            ax.plot([m for m, _ in points], [v for _, v in points], marker="o", label=label,
                    linestyle="--" if label.startswith("cuSPARSELt") else "-")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"K x N = {shape}")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel(f"time / bf16 nn.Linear ({mode})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="never_slower.csv")
    ap.add_argument("--mode", choices=("graph", "eager"), default="graph")
    ap.add_argument("--out", help="PNG path (default: beside the CSV)")
    opts = ap.parse_args()
    with open(opts.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    path = opts.out or os.path.join(os.path.dirname(opts.csv) or ".", f"never_slower_{opts.mode}.png")
    print(f"wrote {plot(rows, path, opts.mode)}")


if __name__ == "__main__":
    main()
