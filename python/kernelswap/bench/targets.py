"""TARGETS.md P1-P11 as data, and their verdicts from a run's rows.

Every target is a ratio against a baseline timed in the same run (absolute times drift
between machines): ours_time / baseline_time <= max_ratio. "ours" is what a user gets:
the automatic dispatcher (ours-auto), or for whole models the swapped model.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    id: str
    what: str
    op: str
    shape: str
    baseline: str  # provider name of the baseline
    max_ratio: float  # ours / baseline time must be <= this
    ours: tuple[str, ...] = ("ours-auto",)  # the fastest of these counts
    dtype: str = "bf16"


TARGETS = (
    Target("P1", "W8A8 linear, end to end", "int8_linear", "4096x8192x8192", "torch-dense", 0.55),
    Target("P2", "W8A8 at small M", "int8_linear", "16x8192x28672", "torch-dense", 0.60),
    Target("P3", "W4A16 decode, group 128", "int4_linear", "1x8192x28672", "torch-dense", 0.27),
    Target("P4", "W4A16 small batch", "int4_linear", "16x8192x28672", "torch-dense", 0.33),
    Target("P5", "W4A16 large batch", "int4_linear", "4096x8192x8192", "torch-dense", 1.05),
    Target("P6", "2:4 sparse bf16, large M", "sparse24_linear", "4096x8192x28672", "torch-dense", 0.70),
    Target("P7", "2:4 sparse bf16, decode", "sparse24_linear", "16x8192x28672", "torch-dense", 0.65),
    Target("P8", "2:4 sparse + int8", "sparse24_int8_linear", "4096x8192x8192", "torch-dense", 0.40),
    Target("P10", "MobileNetV2 b64 after swap fuse, no compile", "model:mobilenetv2", "b64", "eager", 1 / 1.8,
           ours=("swap-fuse",)),
    Target("P10", "ResNet-50 b64 after swap fuse, no compile", "model:resnet50", "b64", "eager", 1 / 1.8,
           ours=("swap-fuse",)),
    Target("P11", "MobileNetV2 b1 latency", "model:mobilenetv2", "b1", "eager", 1 / 8,
           ours=("swap-fuse", "swap-fuse+graph")),
    Target("P11", "ResNet-50 b1 latency", "model:resnet50", "b1", "eager", 1 / 8,
           ours=("swap-fuse", "swap-fuse+graph")),
)
P9_MEDIAN_SPEEDUP = 1.25  # median eager / ours over the N = 64 layers


@dataclass(frozen=True)
class Verdict:
    id: str
    what: str
    shape: str
    ours_us: float | None
    baseline_us: float | None
    ratio: float | None  # ours / baseline
    target: str
    verdict: str

    @property
    def met(self) -> bool:
        return self.verdict.startswith("met")


def _ok(rows, op, shape, dtype) -> dict[str, float]:
    """provider -> p50_us for the rows of one case that ran."""
    return {r["provider"]: float(r["p50_us"]) for r in rows
            if r.get("op") == op and r.get("shape") == shape and r.get("dtype") == dtype and r.get("status") == "ok"}


def _why_missing(rows, op, shape, dtype, providers) -> str:
    for r in rows:
        if r.get("op") == op and r.get("shape") == shape and r.get("dtype") == dtype and r["provider"] in providers:
            return f"no result: {r['provider']} {r.get('status')} ({r.get('note') or ''})".strip()
    return "not run"


def _ratio_verdict(ratio: float, max_ratio: float) -> str:
    if ratio <= max_ratio:
        return f"met ({ratio:.2f}x <= {max_ratio:.2f}x)"
    return f"missed by {ratio / max_ratio:.2f}x ({ratio:.2f}x, target <= {max_ratio:.2f}x)"


def evaluate(rows: list[dict]) -> list[Verdict]:
    out = []
    for t in TARGETS:
        times = _ok(rows, t.op, t.shape, t.dtype)
        goal = f"<= {t.max_ratio:.2f}x {t.baseline}"
        ours = [times[p] for p in t.ours if p in times]
        if not ours or t.baseline not in times:
            missing = [p for p in (*t.ours, t.baseline) if p not in times]
            out.append(Verdict(t.id, t.what, t.shape, min(ours) if ours else None, times.get(t.baseline), None, goal,
                               _why_missing(rows, t.op, t.shape, t.dtype, missing)))
            continue
        ratio = min(ours) / times[t.baseline]
        out.append(Verdict(t.id, t.what, t.shape, min(ours), times[t.baseline], ratio, goal,
                           _ratio_verdict(ratio, t.max_ratio)))
    out.append(evaluate_p9(rows))
    return sorted(out, key=lambda v: int(v.id[1:]))


def evaluate_p9(rows: list[dict], dtype: str = "bf16") -> Verdict:
    """Every N = 64 conv layer no slower than the better of eager and BN-folded cuDNN; median >= 1.25x eager."""
    goal = f"each layer <= min(eager, bn-folded); median eager/ours >= {P9_MEDIAN_SPEEDUP}x"
    shapes = sorted({r["shape"] for r in rows if r.get("op") == "conv_bn_act" and r["shape"].startswith("n64-")})
    speedups, slower = [], []
    for shape in shapes:
        times = _ok(rows, "conv_bn_act", shape, dtype)
        if not {"ours-auto", "eager", "bn-folded"} <= times.keys():
            continue
        speedups.append(times["eager"] / times["ours-auto"])
        if times["ours-auto"] > min(times["eager"], times["bn-folded"]):
            slower.append(shape)
    if not speedups:
        return Verdict("P9", "conv-bn-act per layer, N=64", "n64 layers", None, None, None, goal,
                       "no result: no N=64 conv layer has ours-auto, eager and bn-folded timings")
    med = statistics.median(speedups)
    what = f"{len(speedups)} layers: median {med:.2f}x eager, {len(slower)} slower than the better baseline"
    if not slower and med >= P9_MEDIAN_SPEEDUP:
        verdict = f"met ({what})"
    else:
        verdict = f"missed ({what}; median short by {max(P9_MEDIAN_SPEEDUP / med, 1.0):.2f}x)"
    return Verdict("P9", "conv-bn-act per layer, N=64", "n64 layers", None, None, 1 / med, goal, verdict)
