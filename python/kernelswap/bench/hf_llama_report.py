"""The report of kernelswap.bench.hf_llama: its rows as hf_llama.csv, hf_llama.md (ratios to bf16) and
hf_llama.png, written into one folder."""
from __future__ import annotations

import csv
import os

COLUMNS = ("variant", "layers", "device", "L1_ms_per_token", "L2_ms_per_step", "L2_pipelined_ms_per_step",
           "L3_prefill_ms", "cosine_vs_bf16",
           "top1_agrees", "weight_bytes", "L1_rounds_ms", "error")


def _cell(v):
    return " ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else v


def write(rows: list[dict], out: str, header: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "hf_llama.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k, "")) for k in COLUMNS})
    base = next((r for r in rows if r["variant"] == "bf16"), {})

    def ratio(r, k):
        if k not in r or k not in base or not base[k]:
            return "-"
        return f"{r[k]:.3f} ({r[k] / base[k]:.2f}x)"

    lines = [header, "", "| variant | L1 eager generate, ms/token | L2 static + compile, ms/step | L2 pipelined, ms/step | "
             "L3 prefill, ms | cosine vs bf16 | top-1 | weights GB | error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {ratio(r, 'L1_ms_per_token')} | {ratio(r, 'L2_ms_per_step')} | "
                     f"{ratio(r, 'L2_pipelined_ms_per_step')} | "
                     f"{ratio(r, 'L3_prefill_ms')} | {r.get('cosine_vs_bf16', float('nan')):.4f} | "
                     f"{r.get('top1_agrees', '-')} | {r.get('weight_bytes', 0) / 1e9:.2f} | {r.get('error', '')} |")
    rounds = [f"{r['variant']} {_cell(r['L1_rounds_ms'])}" for r in rows if len(r.get("L1_rounds_ms", [])) > 1]
    if rounds:
        lines += ["", "L1 of each round, ms/token (the table's L1 is from the best N-token and best 1-token samples): " + "; ".join(rounds)]
    with open(os.path.join(out, "hf_llama.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = ("L1_ms_per_token", "L2_ms_per_step", "L2_pipelined_ms_per_step", "L3_prefill_ms")
    fig, axes = plt.subplots(1, len(keys), figsize=(20, 4))
    for ax, k in zip(axes, keys):
        names = [r["variant"] for r in rows if k in r and base.get(k)]
        vals = [r[k] / base[k] for r in rows if k in r and base.get(k)]
        ax.barh(names, vals)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{k} (x of bf16, lower is faster)")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "hf_llama.png"), dpi=90)
