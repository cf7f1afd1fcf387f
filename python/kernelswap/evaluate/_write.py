"""report.md, report.json and the PNG plots (drawn from the JSON data, never during timing)."""
from __future__ import annotations

import json
import math
import os

_TOP_LAYERS = 12  # layers per recipe in the markdown table and the breakdown plot


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def _f(x, fmt=".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, fmt)


def _rows(data: dict) -> list[tuple[str, dict]]:
    return [("float", data["float"])] + [(r["recipe"], r) for r in data["results"]]


def _lat(r: dict, kind: str) -> str:
    lat = r["latency"][kind]
    if "skipped" in lat:
        return "-"
    return f"{lat['median_ms']:.3f} ({lat['p20_ms']:.3f}-{lat['p80_ms']:.3f})"


def format_markdown(data: dict) -> str:
    env = data["env"]
    out = [f"# kernelswap evaluate: {data['model']}", "",
           f"**{env['note']}**", ""]
    if data.get("model_note"):
        out += [f"Model: {data['model_note']}" + (f" ({data['dtype']})" if data.get("dtype") else "") + ".", ""]
    out += [f"batch {data['batch']} ({data['batches']} batch{'es' if data['batches'] > 1 else ''} for accuracy), "
            f"{data['repeats']} timed forwards after {data['warmup']} warm-up; accuracy against "
            f"{data['reference']}.", "",
            "| " + " | ".join(f"{k}: {v}" for k, v in env.items() if k != "note") + " |", "",
            "## Summary", "",
            "| recipe | eager ms median (p20-p80) | graph ms | items/s | peak fwd MiB | weights MiB | file MiB "
            "| cosine mean / min | max abs err | SQNR dB | top-1 agree % | layers swapped / left |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in _rows(data):
        a = r["accuracy"] or {}
        mem = r["memory"]
        tput = r["latency"]["eager"].get("throughput_per_s")
        out.append(
            f"| {label} | {_lat(r, 'eager')} | {_lat(r, 'captured')} | {_f(tput, '.1f')} "
            f"| {_mib(mem['peak_bytes']) if mem else '-'} | {_mib(r['weight_bytes'])} | {_mib(r['file_bytes'])} "
            f"| {_f(a.get('cosine_mean'), '.5f')} / {_f(a.get('cosine_min'), '.5f')} "
            f"| {_f(a.get('max_abs_error'), '.3g')} | {_f(a.get('sqnr_db'), '.1f')} "
            f"| {_f(a.get('top1_agreement'), '.1f')} "
            f"| {r.get('layers_swapped', '-')} / {r.get('layers_left', '-')} |")
    skipped = {r["latency"]["captured"].get("skipped") for _, r in _rows(data)} - {None}
    if skipped:
        out += ["", "CUDA-graph column: " + "; ".join(sorted(skipped))]
    metrics = [(label, r["metric"]) for label, r in _rows(data) if r.get("metric")]
    if metrics:
        keys = list(metrics[0][1])
        out += ["", "## Metric", "", "| recipe | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        out += [f"| {label} | " + " | ".join(_f(m.get(k), '.5g') for k in keys) + " |" for label, m in metrics]
    reload = [(r["recipe"], r["reload_max_abs_diff"]) for r in data["results"] if "reload_max_abs_diff" in r]
    if reload:
        out += ["", "ks.save -> ks.load round trip, max |output difference|: "
                + ", ".join(f"{k} {_f(v, '.3g')}" for k, v in reload)]
    for r in data["results"]:
        pl = r["per_layer"]
        out += ["", f"## Layers: {r['recipe']}", "",
                f"{len(pl['layers'])} swapped layers take {_f(100 * (pl['swapped_share'] or 0), '.1f')}% of a "
                f"forward ({_f(pl['forward_ms_with_hooks'], '.3f')} ms with the timing hooks); the "
                f"{min(_TOP_LAYERS, len(pl['layers']))} slowest:", "",
                "| layer | recipe | before -> after | backend | ms | share % | SQNR dB |", "|---|---|---|---|---|---|---|"]
        for x in sorted(pl["layers"], key=lambda x: -x["time_ms"])[:_TOP_LAYERS]:
            out.append(f"| {x['name']} | {x['recipe']} | {x['before']} -> {x['after']} | {x['backend']} "
                       f"| {x['time_ms']:.3f} | {_f(100 * x['share'] if x['share'] is not None else None, '.1f')} "
                       f"| {_f(x['sqnr_db'], '.1f')} |")
        if pl["left"]:
            out += ["", f"Left unswapped ({len(pl['left'])}):", ""]
            out += [f"- {x['name']} ({x['before']}, {x['recipe']}): {x['reason']}" for x in pl["left"][:30]]
            if len(pl["left"]) > 30:
                out.append(f"- ... and {len(pl['left']) - 30} more (report.json lists all)")
    return "\n".join(out) + "\n"


def write_report(data: dict, out_dir, plots: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.md")]
    with open(paths[0], "w") as f:
        json.dump(data, f, indent=2)  # inf (an exact SQNR) is written as Infinity
    text = format_markdown(data)
    if plots:
        pngs = plot_report(paths[0], out_dir)
        text += "\n## Plots\n\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs) + "\n"
        paths += pngs
    with open(paths[1], "w") as f:
        f.write(text)
    return paths


def plot_report(json_path: str, out_dir: str) -> list[str]:
    """time_vs_accuracy.png, layer_breakdown.png and sizes.png from report.json."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("kernelswap evaluate draws its plots with matplotlib: pip install matplotlib "
                          "(or pass plots=False / --no-plots)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with open(json_path) as f:
        data = json.load(f)
    rows = _rows(data)
    sub = f"{data['model']}, batch {data['batch']}, {data['env'].get('gpu', 'CPU smoke run')}"
    paths = []

    # SQNR of the outputs against the reference separates recipes that all keep top-1 (cosine 0.9999x);
    # the float model (exact: infinite SQNR) is the dashed line at its latency.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axvline(data["float"]["latency"]["eager"]["median_ms"], color="gray", ls="--", label="float model")
    for label, r in rows[1:]:
        acc = r["accuracy"] or {}
        x, y = r["latency"]["eager"]["median_ms"], acc.get("sqnr_db")
        if y is None or math.isinf(y):
            continue
        ax.scatter([x], [y], s=60)
        top1 = acc.get("top1_agreement")
        ax.annotate(label + ("" if top1 is None else f"\ntop-1 agree {top1:.1f}%"), (x, y),
                    textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("eager latency, median ms per forward")
    ax.set_ylabel("SQNR of the outputs vs the reference, dB")
    ax.set_title(f"time vs accuracy per recipe\n{sub}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.margins(x=0.15, y=0.15)
    paths.append(_save(fig, out_dir, "time_vs_accuracy.png"))

    results = data["results"]
    prefix = _common_prefix([x["name"] for r in results for x in r["per_layer"]["layers"]])
    fig, axes = plt.subplots(len(results), 1, figsize=(9, (0.28 * _TOP_LAYERS + 1.3) * len(results)), squeeze=False)
    # one colour per backend across all panels; the legend from explicit patches (an empty bar
    # container would be drawn in the default colour)
    colors = {b: f"C{i}" for i, b in enumerate(sorted({x["backend"] or "?" for r in results
                                                        for x in r["per_layer"]["layers"]}))}
    for ax, r in zip(axes[:, 0], results):
        layers = sorted(r["per_layer"]["layers"], key=lambda x: -x["time_ms"])[:_TOP_LAYERS][::-1]
        ax.barh([x["name"][len(prefix):] or x["name"] for x in layers], [100 * (x["share"] or 0) for x in layers],
                color=[colors[x["backend"] or "?"] for x in layers])
        shown = sorted({x["backend"] or "?" for x in layers})
        handles = [Patch(color=colors[b], label=f"backend: {b}") for b in shown]
        ax.set_xlabel("share of the forward's time, %")
        ax.set_title(f"{r['recipe']}: {len(r['per_layer']['layers'])} swapped layers, "
                     f"{100 * (r['per_layer']['swapped_share'] or 0):.0f}% of the time", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        if layers:
            ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.suptitle("slowest swapped layers" + (f" (names after {prefix!r})" if prefix else "") + f"\n{sub}",
                 fontsize=10)
    paths.append(_save(fig, out_dir, "layer_breakdown.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [label for label, _ in rows]
    xs = range(len(rows))
    for off, (field, what) in zip((-0.2, 0.2), (("weight_bytes", "weights on the device"),
                                                ("file_bytes", "saved file"))):
        ax.bar([x + off for x in xs], [(r[field] or 0) / 2**20 for _, r in rows], width=0.4, label=what)
    ax.set_xticks(list(xs), labels, rotation=20)
    ax.set_ylabel("MiB")
    ax.set_title(f"model size per recipe\n{sub}", fontsize=10)
    ax.legend()
    paths.append(_save(fig, out_dir, "sizes.png"))
    return paths


def _common_prefix(names: list[str]) -> str:
    """The dotted prefix every name shares ('inner.0.model.encoder.'), so plot labels stay short."""
    if len(names) < 2:
        return ""
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    common = common[:min(len(p) for p in parts) - 1]  # keep at least one part of every name
    return ".".join(common) + "." if common else ""


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
