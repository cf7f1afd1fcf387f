"""The never-slower sweep (issue 13): every recipe against the bf16 nn.Linear it replaces.

    python benchmarks/never_slower.py --out DIR [--shapes 4096x14336,8192x28672] [--m 1,32,512,2048,8192]
                                      [--recipes int8,int8-weight,int4,sparse24,sparse24-int8] [--seconds 170]
                                      (--recipes also takes fp8, sparse24-fp8)

Needs a GPU. For each layer size (K x N, default the six Llama-3 sizes of
kernelswap.bench.shapes.LLM_KN) one bf16 nn.Linear (no bias, as in Llama) is swapped with
`ks.swap` per recipe (int4 = group 128 asymmetric) and timed at each M, against the same
nn.Linear in the same run:
  bf16          the nn.Linear, eager and replayed from a CUDA graph
  auto          the swapped layer (its forward: the dispatcher's choice), eager and graph
  impl:B/NAME   each implementation registered for the layer's op that can serve this call
                (those whose `supports` answers None or a Preference: the choices the
                dispatcher weighs), called as the layer's runner calls it, graph only:
                the per-M thresholds in ops/ are read off these rows
  kernel:...    kernel modes no dispatcher rule picks yet (VARIANTS: W8A16 with TMA loads
                from M = 128), graph only
  cusparselt    (2:4 only) F.linear on torch.sparse.to_sparse_semi_structured of the same
                pruned weight (torch's cuSPARSELt path), eager and graph
Timing: triton.testing.do_bench (CUDA events around each call, L2 flushed before each, warmup,
median with p20 / p80) of the call or of the graph's replay; each provider's first eager call
(autotuning, prepared layouts) runs before it is timed or captured. x_bf16 is the time over
bf16's in the same mode at the same shape and M.

Writes DIR/never_slower.csv (long format: one row per shape, M, recipe, provider, mode; the
GPU, torch and triton versions on every row; `note` holds an error, or the configs a Triton
tuning run chose during that row's first call) after each layer size, and DIR/never_slower.md:
per layer size, the graph-mode ratio of every provider per M and how many auto points are at
or below bf16; then, for each per-M constant of the dispatcher (THRESHOLDS), the smallest swept
M from which its upper implementation is no slower at every larger M on every layer size.
--seconds stops starting new recipes past that budget (the table says so).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import time
from typing import Callable

import torch

DEFAULT_M = (1, 8, 32, 128, 512, 2048, 8192)
RECIPES = ("int8", "int8-weight", "int4", "sparse24", "sparse24-int8")
EXTRA_RECIPES = ("fp8", "sparse24-fp8")  # sm_90a GEMMs (elsewhere their reference serves): by --recipes only
FIELDS = ("gpu", "torch", "triton", "date", "shape", "k", "n", "m", "recipe", "provider", "mode", "impl",
          "us", "us_p20", "us_p80", "tflops", "x_bf16", "note")


def parse_shapes(text: str | None) -> list[tuple[int, int]]:
    """'4096x14336,8192x28672' -> [(K, N), ...]; None -> the six LLM layer sizes."""
    if not text:
        from kernelswap.bench.shapes import LLM_KN
        return list(LLM_KN)
    out = []
    for item in text.split(","):
        try:
            k, n = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {item!r} is not KxN (e.g. 4096x14336)") from None
        out.append((k, n))
    return out


def parse_ints(text: str | None, default: tuple[int, ...], what: str) -> list[int]:
    if not text:
        return list(default)
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise SystemExit(f"{what}: every value must be >= 1, got {text!r}")
    return values


# The dispatcher's per-M constants and the two implementations each one chooses between:
# (constant, recipe, the implementation below it, the one from it on).
THRESHOLDS = (
    ("ops/sparse24_cslt.CSLT_FROM_M", "sparse24", "impl:cuda/_sparse24_linear_cuda", "impl:torch/_sparse24_linear_cslt"),
    ("ops/int8_triton.W8A16_TORCH_FROM_M", "int8-weight", "impl:triton/_int8_weight_linear_triton",
     "impl:torch/_int8_weight_linear_torch"),
    ("ops/int4_triton.TORCH_FROM_M", "int4", "impl:triton/_int4_linear_triton", "impl:torch/_int4_linear_torch"),
    ("ops/mixed_cuda.MIXED_M['int8_weight_linear'][0]", "int8-weight", "impl:triton/_int8_weight_linear_triton",
     "impl:cuda/_int8_weight_mm"),
    ("ops/mixed_cuda.MIXED_M['int4_linear'][0]", "int4", "impl:triton/_int4_linear_triton", "impl:cuda/_int4_mm"),
)


def crossover(rows: list[dict], recipe: str, below: str, above: str) -> tuple[int | None, str]:
    """(the smallest swept M from which `above` is no slower than `below` at that M and every
    larger swept M, on every layer size measured; None if no such M), and a line of evidence.
    Graph-mode times; an M where either is missing on some layer size counts against `above`."""
    times: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r["recipe"] == recipe and r["mode"] == "graph" and r["provider"] in (below, above) and r["us"] != "":
            times.setdefault((r["shape"], r["m"]), {})[r["provider"]] = r["us"]
    shapes = sorted({s for s, _ in times})
    ms = sorted({m for _, m in times})
    if not ms:
        return None, "not measured"
    wins = {m: all(len(times.get((s, m), {})) == 2 and times[(s, m)][above] <= times[(s, m)][below] for s in shapes)
            for m in ms}
    start = None
    for m in reversed(ms):
        if not wins[m]:
            break
        start = m
    evidence = "; ".join(f"M={m}: " + ", ".join(
        f"{s} {times[(s, m)][below]:.0f}/{times[(s, m)][above]:.0f} us" if len(times.get((s, m), {})) == 2
        else f"{s} n/a" for s in shapes) for m in ms)
    return start, evidence


def markdown(rows: list[dict], stopped: str = "") -> str:
    """The graph-mode table per layer size: x bf16 per provider and M, and the auto count."""
    lines = ["# Never slower than bf16 (benchmarks/never_slower.py)", ""]
    if rows:
        r0 = rows[0]
        lines += [f"{r0['gpu']}, torch {r0['torch']}, triton {r0['triton']}, {r0['date']}. "
                  "Cells: time / bf16 nn.Linear's, both replayed from a CUDA graph (eager: the CSV).", ""]
    knobs = {k: v for k, v in sorted(os.environ.items()) if k.startswith("KERNELSWAP_") and k != "KERNELSWAP_COMMIT"}
    if knobs:  # e.g. KERNELSWAP_SM90_SMALL_M for a crossover sweep: the run's results hold only with them
        lines += ["Run with " + ", ".join(f"`{k}={v}`" for k, v in knobs.items()) + ".", ""]
    if stopped:
        lines += [f"**Stopped early:** {stopped}", ""]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        here = [r for r in rows if r["shape"] == shape and r["mode"] == "graph"]
        ms = sorted({r["m"] for r in here})
        bf16 = {r["m"]: r["us"] for r in here if r["provider"] == "bf16"}
        lines += [f"## K x N = {shape}", "", "| recipe | provider | " + " | ".join(f"M={m}" for m in ms) + " |",
                  "|---|---|" + "---|" * len(ms),
                  "| bf16 | us | " + " | ".join(f"{bf16[m]:.1f}" if bf16.get(m, "") != "" else "" for m in ms) + " |"]
        for recipe, provider in dict.fromkeys((r["recipe"], r["provider"]) for r in here if r["provider"] != "bf16"):
            cells = {r["m"]: r for r in here if r["recipe"] == recipe and r["provider"] == provider}
            lines.append(f"| {recipe} | {provider} | " + " | ".join(
                f"{cells[m]['x_bf16']:.2f}" if m in cells and cells[m]["x_bf16"] != "" else "" for m in ms) + " |")
        auto = [r for r in here if r["provider"] == "auto" and r["x_bf16"] != ""]
        ok = sum(1 for r in auto if r["x_bf16"] <= 1.0)
        lines += ["", f"auto at or below bf16: {ok} of {len(auto)} points.", ""]
    lines += ["## Thresholds read off this run (graph mode)", "",
              "| constant | from M on (None: never) | times below / above, per M and layer size |", "|---|---|---|"]
    for name, recipe, below, above in THRESHOLDS:
        start, evidence = crossover(rows, recipe, below, above)
        lines.append(f"| {name} | {start} | {evidence} |")
    failed = [r for r in rows if r["us"] == ""]
    if failed:
        lines += ["", "## Not timed (errors)", ""]
        lines += [f"- {r['shape']} M={r['m']} {r['recipe']} {r['provider']} {r['mode']}: {r['note']}" for r in failed]
    tuned = [r for r in rows if r["us"] != "" and r["note"]]
    if tuned:
        lines += ["", "## Triton configs tuned (first call of the row)", ""]
        lines += [f"- {r['shape']} M={r['m']} {r['recipe']} {r['provider']}: {r['note']}" for r in tuned]
    return "\n".join(lines) + "\n"


def write(out_dir: str, rows: list[dict], stopped: str = "") -> None:
    with open(os.path.join(out_dir, "never_slower.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, "never_slower.md"), "w") as f:
        f.write(markdown(rows, stopped))


# ---------------------------------------------------------------- GPU part
def timed(fn: Callable[[], object], mode: str, warmup_ms: float, rep_ms: float) -> tuple[float, float, float]:
    """(median, p20, p80) in us of fn() (eager) or of the replay of a graph of one fn() call."""
    import triton

    fn()  # autotuning, prepared layouts, runners: never inside the timing or a capture
    torch.cuda.synchronize()
    if mode == "graph":
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        fn = graph.replay
    q = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return q[0] * 1e3, q[1] * 1e3, q[2] * 1e3


def impl_runs(op: str, x: torch.Tensor, weights: tuple) -> list[tuple[str, Callable]]:
    """(impl:backend/name, x -> out) for every implementation of `op` that may serve this
    call, bound as the layers' runners bind them (ops/_runner.py)."""
    from kernelswap.ops import backend
    from kernelswap.ops.backend import Preference

    out = []
    for impl in backend._candidates(op, x.device.type, None, backend.triton_interpreting()):
        if impl.backend == "reference":
            continue
        why = impl.supports(x, *weights)
        if why is not None and not isinstance(why, Preference):
            continue
        try:
            run = impl.bind(*weights) if impl.bind is not None else (lambda x, fn=impl.fn: fn(x, *weights))
        except Exception as e:  # noqa: BLE001 - e.g. a layout not prepared: the row records it
            run = _raises(e)
        out.append((f"impl:{impl.backend}/{impl.fn.__name__}", run))
    return out


# Kernel modes no dispatcher rule picks yet, timed so one can be set from this run:
# recipe -> (from this M on, provider name, fn(weights) -> x -> out).
VARIANTS = {
    "int8-weight": [(128, "kernel:triton/w8a16_tma",  # the W8A16 GEMM with TMA loads (host descriptors per call)
                     lambda w: (lambda x: _w8a16(x, *w, use_tma=True)))],
}


def _w8a16(x, w_q, w_scale, bias, **kw):
    from kernelswap.kernels.w8a16_gemm import int8_weight_linear
    return int8_weight_linear(x, w_q, w_scale, bias, **kw)


def kernel_variants(recipe: str, m: int, weights: tuple, device: str) -> list[tuple[str, Callable]]:
    if device != "cuda":
        return []
    return [(name, make(weights)) for from_m, name, make in VARIANTS.get(recipe, ()) if m >= from_m]


def _raises(error: Exception) -> Callable:
    def run(x):
        raise error
    return run


def autotuners() -> list:
    """Every triton Autotuner that kernelswap's kernel modules hold (module attributes and
    the values of dicts of them), to report what each tuning run chose."""
    import sys

    import triton

    found = []
    for name, mod in list(sys.modules.items()):
        if not name.startswith("kernelswap.kernels.") or mod is None:
            continue
        for value in vars(mod).values():
            for v in value.values() if isinstance(value, dict) else (value,):
                if isinstance(v, triton.runtime.Autotuner) and all(v is not f for f in found):
                    found.append(v)
    return found


def tuned_since(before: dict[int, set]) -> str:
    """The configs tuned since `before` ({id(autotuner): its cache keys}), as one note."""
    notes = []
    for tuner in autotuners():
        for key in set(tuner.cache) - before.get(id(tuner), set()):
            c = tuner.cache[key]
            notes.append(f"{getattr(tuner.fn, '__name__', 'kernel')}: {c.kwargs} w{c.num_warps} s{c.num_stages}")
    return "; ".join(notes)


def cusparselt_linear(weight: torch.Tensor) -> Callable | None:
    """F.linear on torch's cuSPARSELt 2:4 tensor of this (already 2:4) weight, or None."""
    try:
        from torch.sparse import to_sparse_semi_structured
        ws = to_sparse_semi_structured(weight)
    except Exception as e:  # noqa: BLE001 - a missing or refusing cuSPARSELt leaves the baseline out
        print(f"cusparselt baseline unavailable: {e}")
        return None
    return lambda x: torch.nn.functional.linear(x, ws)


def sweep(shapes: list[tuple[int, int]], ms: list[int], recipes: list[str], timer: Callable, seconds: float = 0.0,
          device: str = "cuda", log: Callable[[str], None] = print,
          on_shape: Callable[[list[dict], str], None] | None = None) -> tuple[list[dict], str]:
    """The rows of the sweep and why it stopped early ("" when it did not). timer(fn, mode) ->
    (median, p20, p80) us (`timed` on the GPU; the CPU test passes a stand-in).
    on_shape(rows, stopped) runs after each layer size (main writes the files there)."""
    import triton

    import kernelswap as ks
    from kernelswap import packing
    from kernelswap.ops import backend

    start = time.monotonic()
    tag = dict(gpu=torch.cuda.get_device_name() if device == "cuda" else device, torch=torch.__version__,
               triton=triton.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    rows: list[dict] = []
    stopped = ""
    for k, n in shapes:
        shape = f"{k}x{n}"
        linear = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
        xs = {m: torch.randn(m, k, device=device, dtype=torch.bfloat16) for m in ms}
        bf16: dict[tuple[int, str], float] = {}

        def add(m, recipe, provider, mode, fn, impl=""):
            row = dict(tag, shape=shape, k=k, n=n, m=m, recipe=recipe, provider=provider, mode=mode, impl=impl,
                       us="", us_p20="", us_p80="", tflops="", x_bf16="", note="")
            rows.append(row)
            before = {id(t): set(t.cache) for t in autotuners()}
            try:
                us, p20, p80 = timer(lambda: fn(xs[m]), mode)
            except Exception as e:  # noqa: BLE001 - one failing provider must not end the sweep
                row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                log(f"  {shape} M={m} {recipe} {provider} {mode}: {row['note']}")
                return
            if provider == "bf16":
                bf16[(m, mode)] = us
            ref = bf16.get((m, mode))
            row.update(us=round(us, 2), us_p20=round(p20, 2), us_p80=round(p80, 2),
                       tflops=round(2.0 * m * k * n / (us * 1e-6) / 1e12, 1), x_bf16=round(us / ref, 3) if ref else "",
                       note=tuned_since(before))  # what a Triton tuning run on this call chose

        with torch.no_grad():
            for m in ms:
                for mode in ("eager", "graph"):
                    add(m, "bf16", "bf16", mode, linear)
            for recipe in recipes:
                if seconds and time.monotonic() - start > seconds:
                    stopped = (f"--seconds {seconds:g} spent before {shape} {recipe}; later recipes and "
                               f"layer sizes were not measured")
                    break
                model = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16))
                model[0].weight.data.copy_(linear.weight.data)
                ks.swap(model.eval(), recipe, probe=False)
                layer = model[0]
                if not isinstance(layer, ks.nn.KernelswapModule):
                    log(f"  {shape} {recipe}: not swapped ({type(layer).__name__})")
                    continue
                op, weights = layer.OP, layer.op_args()
                cslt = cusparselt_linear(packing.prune_24(linear.weight.data)) if recipe == "sparse24" else None
                for m in ms:
                    x = xs[m]
                    chosen = backend.choose(op, x.device, x, *weights)
                    for mode in ("eager", "graph"):
                        add(m, recipe, "auto", mode, layer, impl=f"{chosen.backend}/{chosen.fn.__name__}")
                    for name, run in impl_runs(op, x, weights):
                        add(m, recipe, name, "graph", run, impl=name[len("impl:"):])
                    for name, run in kernel_variants(recipe, m, weights, device):
                        add(m, recipe, name, "graph", run, impl=name[len("kernel:"):])
                    if cslt is not None:
                        for mode in ("eager", "graph"):
                            add(m, recipe, "cusparselt", mode, cslt, impl="to_sparse_semi_structured")
                log(f"  {shape} {recipe} done at {time.monotonic() - start:.0f} s")
                del model, layer, weights, cslt
                if device == "cuda":
                    torch.cuda.empty_cache()
        if on_shape is not None:
            on_shape(rows, stopped)
        if stopped:
            break
    return rows, stopped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--shapes", help="KxN list, e.g. 4096x14336,8192x28672 (default: the six LLM sizes)")
    ap.add_argument("--m", help=f"token counts (default {','.join(map(str, DEFAULT_M))})")
    ap.add_argument("--recipes", help=f"of {','.join(RECIPES + EXTRA_RECIPES)} (default: {','.join(RECIPES)})")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop starting new recipes past this budget (0: none)")
    ap.add_argument("--warmup-ms", type=float, default=10.0)
    ap.add_argument("--rep-ms", type=float, default=40.0)
    opts = ap.parse_args()
    shapes, ms = parse_shapes(opts.shapes), parse_ints(opts.m, DEFAULT_M, "--m")
    recipes = opts.recipes.split(",") if opts.recipes else list(RECIPES)
    if unknown := [r for r in recipes if r not in RECIPES + EXTRA_RECIPES]:
        raise SystemExit(f"--recipes: unknown {unknown}; choose from {', '.join(RECIPES + EXTRA_RECIPES)}")
    if not torch.cuda.is_available():
        raise SystemExit("never_slower.py needs a CUDA device")
    os.makedirs(opts.out, exist_ok=True)
    torch.manual_seed(0)
    begun = time.monotonic()
    rows, stopped = sweep(shapes, ms, recipes, lambda fn, mode: timed(fn, mode, opts.warmup_ms, opts.rep_ms),
                          opts.seconds, on_shape=lambda rows, stopped: write(opts.out, rows, stopped))
    write(opts.out, rows, stopped)
    print(markdown(rows, stopped))
    print(f"wrote {opts.out}/never_slower.csv and never_slower.md in {time.monotonic() - begun:.0f} s")


if __name__ == "__main__":
    main()
