"""Results out: the long-format CSV, the markdown summary, the short console table.

Speedup everywhere means baseline time / our time: above 1 we are faster, below 1 we lose.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict

from .targets import evaluate

COLUMNS = (
    "op", "provider", "kind", "shape", "dtype", "status",
    "p50_us", "p20_us", "p80_us", "tflops", "gbps", "pct_peak", "peak",
    "throughput", "throughput_unit", "weight_mb", "peak_mem_mb", "first_s", "note",
    "gpu", "torch", "triton", "cuda", "commit", "date", "shape_set",
)
NUMERIC = ("p50_us", "p20_us", "p80_us", "tflops", "gbps", "pct_peak", "throughput", "weight_mb", "peak_mem_mb",
           "first_s")
STATUSES = ("ok", "error", "unsupported", "absent", "skipped", "unavailable")


# ---------------------------------------------------------------- CSV
def write_csv(rows: list[dict], path: str) -> None:
    unknown = sorted({k for r in rows for k in r} - set(COLUMNS))
    if unknown:  # a misspelt field would otherwise vanish from the results
        raise ValueError(f"bench rows carry fields that are not CSV columns: {unknown}")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(r.get(c)) for c in COLUMNS})


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for c in NUMERIC:
            r[c] = float(r[c]) if r.get(c) not in (None, "") else None
    return rows


# ---------------------------------------------------------------- markdown
def _us(v) -> str:
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _ok_rows(rows, op=None):
    return [r for r in rows if r.get("status") == "ok" and (op is None or r["op"] == op)]


# ---------------------------------------------------------------- several runs as one
def _run_of(r: dict) -> tuple:
    return tuple(r.get(c) for c in ("gpu", "torch", "triton", "cuda", "commit", "date"))


def merge(runs: list[list[dict]]) -> list[dict]:
    """The rows of several runs (oldest first) as one result: for the same case (op,
    provider, shape, dtype) a later run's row replaces an earlier one's, unless the later
    one was skipped (not measured); each run keeps its own measured peaks."""
    merged: dict[tuple, dict] = {}
    for rows in runs:
        for r in rows:
            key = (r["op"], r["provider"], r["shape"], r["dtype"])
            if r.get("kind") == "peak":
                key += _run_of(r)
            if key in merged and r.get("status") == "skipped":
                continue
            merged[key] = r
    return list(merged.values())


def _header(rows: list[dict]) -> list[str]:
    first = rows[0] if rows else {}
    runs = sorted(dict.fromkeys(_run_of(r) for r in rows), key=lambda run: str(run[-1]))  # by date
    lines = ["# kernelswap benchmarks", ""]
    if len(runs) > 1:
        lines += [f"Merged from {len(runs)} runs (`python -m kernelswap bench --merge`); where they overlap, the later "
                  "run's rows replace the earlier one's. Each row's run is in the CSV.", ""]
        lines += _table(["GPU", "torch", "Triton", "CUDA", "commit", "date", "rows"],
                        [[str(v) for v in run] + [str(sum(1 for r in rows if _run_of(r) == run))] for run in runs])
        lines += [""]
    else:
        lines += [f"GPU: {first.get('gpu', '?')}; torch {first.get('torch', '?')}, Triton {first.get('triton', '?')}, "
                  f"CUDA {first.get('cuda', '?')}; commit {first.get('commit', '?')}; {first.get('date', '?')}.", ""]
    lines += [("CPU wall-clock smoke run: these numbers check the harness, they measure nothing. "
               if first.get("gpu") == "cpu" else "")
              + "Times are medians (p20-p80 in the CSV) of CUDA-event timings. Speedup = baseline time / our time: "
              "above 1 we win, below 1 we lose.", ""]
    peaks = [r for r in rows if r.get("kind") == "peak"]
    if peaks:
        lines += ["Measured peaks (each in the run whose rows it rates):", ""]
        body = []
        for r in peaks:
            val = r.get("gbps") or r.get("tflops")
            body.append([r["provider"], r["shape"], "-" if val is None else f"{val:,.4g} {r.get('note', '')}",
                         r["status"] if r["status"] != "ok" else _us(r.get("p50_us"))]
                        + ([str(r.get("commit"))] if len(runs) > 1 else []))
        lines += _table(["peak", "shape", "rate", "p50 us"] + (["commit"] if len(runs) > 1 else []), body) + [""]
    return lines


def _targets_section(rows: list[dict]) -> list[str]:
    lines = ["## Targets (TARGETS.md)", ""]
    body = [[v.id, v.what, v.shape, _us(v.ours_us), _us(v.baseline_us),
             "-" if v.ratio is None else f"{v.ratio:.2f}x", v.target, v.verdict] for v in evaluate(rows)]
    return lines + _table(["#", "what", "shape", "ours us", "baseline us", "ours/baseline", "target", "verdict"],
                          body) + [""]


def replaced_baselines(op: str) -> tuple[str, ...]:
    """The providers standing for the layer a swap replaces ("never slower" compares with these)."""
    return ("eager", "bn-folded") if op == "conv_bn_act" else ("torch-dense",)


def _losses_section(rows: list[dict]) -> list[str]:
    """Every case where ours-auto is slower than the layer it replaces."""
    times = defaultdict(dict)
    for r in _ok_rows(rows):
        times[(r["op"], r["shape"], r["dtype"])][r["provider"]] = r["p50_us"]
    body = []
    for (op, shape, dtype), t in sorted(times.items()):
        base = [t[p] for p in replaced_baselines(op) if p in t]
        if "ours-auto" in t and base and t["ours-auto"] > min(base):
            body.append([op, shape, dtype, _us(t["ours-auto"]), _us(min(base)), f"{min(base) / t['ours-auto']:.2f}x"])
    lines = ["## Where we lose (ours-auto slower than the layer it replaces)", ""]
    if not body:
        return lines + ["None among the cases that ran.", ""]
    return lines + _table(["op", "shape", "dtype", "ours us", "replaced us", "speedup"], body) + [""]


def _op_sections(rows: list[dict]) -> list[str]:
    lines = []
    ops = [op for op in dict.fromkeys(r["op"] for r in rows) if op != "peak" and not op.startswith("model:")]
    for op in ops:
        op_rows = [r for r in rows if r["op"] == op]
        providers = list(dict.fromkeys(r["provider"] for r in op_rows))
        for dtype in dict.fromkeys(r["dtype"] for r in op_rows):
            cases = defaultdict(dict)
            for r in op_rows:
                if r["dtype"] == dtype:
                    cases[r["shape"]][r["provider"]] = r
            lines += [f"## {op} ({dtype})", ""]
            body = []
            for shape, by in cases.items():
                ours = by.get("ours-auto")
                ref = ours["p50_us"] if ours and ours["status"] == "ok" else None
                cells = [shape]
                for p in providers:
                    r = by.get(p)
                    if r is None:
                        cells.append("")
                    elif r["status"] != "ok":
                        cells.append(r["status"])
                    elif p == "ours-auto" or ref is None:
                        cells.append(_us(r["p50_us"]))
                    else:
                        cells.append(f"{_us(r['p50_us'])} ({r['p50_us'] / ref:.2f}x)")
                if ours and ours["status"] == "ok" and ours.get("pct_peak") is not None:
                    cells.append(f"{ours['pct_peak']:.0f}% {ours.get('peak', '')}")
                else:
                    cells.append("-")
                cells.append(_served_by(ours))
                body.append(cells)
            lines += _table(["shape"] + [f"{p} us" for p in providers] + ["ours-auto % of peak", "served by"], body)
            lines += ["", "(x) = speedup of ours-auto against that provider.", ""]
    return lines


def _served_by(row: dict | None) -> str:
    """The backend the dispatcher chose for ours-auto (the providers note it as "auto dispatch -> X")."""
    note = (row or {}).get("note") or ""
    return note.split("auto dispatch -> ", 1)[1].split(";")[0] if "auto dispatch -> " in note else "-"


def _model_section(rows: list[dict]) -> list[str]:
    model_rows = [r for r in rows if r["op"].startswith("model:")]
    if not model_rows:
        return []
    eager = {(r["op"], r["shape"], r["dtype"], r["provider"].endswith("+graph")): r["p50_us"]
             for r in _ok_rows(model_rows) if r["provider"] in ("eager", "bf16", "bf16+graph")}
    body = []
    for r in model_rows:
        ok = r["status"] == "ok"
        # decoder: graphed recipes against graphed bf16; CNNs: everything against eager
        graphed = r["provider"].endswith("+graph") and r["op"].startswith("model:llama")
        base = eager.get((r["op"], r["shape"], r["dtype"], graphed))
        speed = f"{base / r['p50_us']:.2f}x" if ok and base else "-"
        thr = f"{r['throughput']:,.0f} {r.get('throughput_unit', '')}" if ok and r.get("throughput") else "-"
        first = f"{r['first_s']:.1f}" if ok and r.get("first_s") is not None else "-"
        body.append([r["op"][6:], r["shape"], r["provider"], _us(r["p50_us"] / 1e3) if ok else r["status"], thr,
                     speed, first, _mb(r.get("weight_mb")), _mb(r.get("peak_mem_mb")), r.get("note") or ""])
    return ["## Models", ""] + _table(["model", "case", "variant", "ms", "throughput", "speedup vs eager / bf16",
                                       "first answer s", "weights MB", "peak MB", "note"], body) + [""]


def _mb(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _not_timed_section(rows: list[dict]) -> list[str]:
    seen, body = set(), []
    for r in rows:
        if r.get("status") in ("ok", None):
            continue
        key = (r["op"], r["provider"], r["status"], r.get("note"))
        if key in seen:
            continue
        seen.add(key)
        n = sum(1 for x in rows if (x["op"], x["provider"], x["status"], x.get("note")) == key)
        body.append([r["op"], r["provider"], r["status"], str(n), (r.get("note") or "").replace("|", "/")])
    if not body:
        return []
    return ["## Not timed (every row is in the CSV)", ""] + _table(["op", "provider", "status", "cases", "why"],
                                                                   body) + [""]


def markdown(rows: list[dict]) -> str:
    lines = _header(rows) + _targets_section(rows) + _losses_section(rows) + _model_section(rows)
    lines += _op_sections(rows) + _not_timed_section(rows)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- console
def short_table(rows: list[dict]) -> str:
    """The last thing a run prints: one line per target, then row counts by status."""
    lines = [f"{'#':<4} {'what':<44} {'shape':<16} {'ours us':>9} {'base us':>9} {'ratio':>7}  verdict"]
    for v in evaluate(rows):
        ratio = "-" if v.ratio is None else f"{v.ratio:.2f}x"
        lines.append(f"{v.id:<4} {v.what[:44]:<44} {v.shape:<16} {_us(v.ours_us):>9} {_us(v.baseline_us):>9} "
                     f"{ratio:>7}  {v.verdict}")
    counts = defaultdict(int)
    for r in rows:
        counts[r.get("status")] += 1
    lines.append("rows: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]))
    return "\n".join(lines)
