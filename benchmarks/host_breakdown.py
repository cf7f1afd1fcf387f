"""Where a swapped layer's host time goes, step by step (the rows of benchmarks/overhead_quick.py
that lose to nn.Linear, taken apart).

    python benchmarks/host_breakdown.py [--calls 3000] [--cases int8:128,fp8:128] [--api]

For each case (recipe, M; bf16, K = N = 4096) it prints the host time per call (overhead_quick's
host_us: calls issued behind a GPU sleep, so the GPU never paces them) of: the module call; the
per-layout runner alone (what forward adds is the difference); for a raw runner
(kernelswap.ops._raw), its one C call alone on a kept output (what the runner's Python adds is the
difference); for a replayed runner (kernelswap.ops._replay), each recorded step alone (an aten op
or a Triton launch), so the steps' sum can be read against the runner's time. Next to them,
nn.Linear on the same input and an empty torch call (x.new_empty) as the floor of one op. With
--api, each case's module call and nn.Linear are also run under torch.profiler, and the CUDA
runtime and driver calls they make are listed per call (count, host us): where the C side's time
goes.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import kernelswap as ks
from kernelswap.ops import _raw, _replay
from overhead_quick import hidden_host_us as per_call_us  # the same measure (benchmarks/ is on sys.path)

CASES = (("sparse24", 1), ("sparse24", 16), ("int8-weight", 16), ("int4", 128), ("int8-weight", 128),
         ("int8", 1), ("int8", 16), ("sparse24-int8", 1), ("int4", 1),
         ("int8", 128), ("sparse24", 128), ("sparse24-int8", 128), ("fp8", 128))


def api_calls(fn, calls: int = 200) -> list[tuple[str, float, float]]:
    """(name, calls per fn call, host us per fn call) of the CUDA runtime / driver calls fn makes."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = []
    for e in prof.key_averages():
        if e.key.startswith(("cuda", "cu")) and e.key != "cudaDeviceSynchronize":
            out.append((e.key, e.count / calls, e.cpu_time_total / calls))
    return sorted(out, key=lambda r: -r[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--cases", default="", help="recipe:M,... (default: all of CASES)")
    ap.add_argument("--api", action="store_true", help="list the CUDA API calls of each case (torch.profiler)")
    a = ap.parse_args()
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in a.cases.split(",")] if a.cases else CASES
    api = []
    k = n = 4096
    rows = []
    with torch.no_grad():
        for recipe, m in cases:
            dense = nn.Linear(k, n).to("cuda", torch.bfloat16).eval()
            model = nn.Sequential(nn.Linear(k, n)).to("cuda", torch.bfloat16).eval()
            model[0].load_state_dict(dense.state_dict())
            ks.swap(model, recipe, probe=False)
            layer, x = model[0], torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for _ in range(_replay.RETRIES + 2):
                layer(x)
            run, = layer._runs.values()
            rows.append((f"{recipe} M={m}", "module", per_call_us(lambda: layer(x), a.calls)))
            rows.append((f"{recipe} M={m}", f"runner ({type(run).__name__}, {layer.served_by()})",
                         per_call_us(lambda: run(x), a.calls)))
            if hasattr(run, "c_run"):  # a raw runner: its C call alone, on a kept output and scratch
                out, scratch = run(x), torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
                c_run, handle = run.c_run, run.plan.handle
                stream = torch.cuda.current_stream().cuda_stream
                rows.append((f"{recipe} M={m}", "  its C call alone",
                             per_call_us(lambda: c_run(handle, x.data_ptr(), out.data_ptr(), scratch.data_ptr(),
                                                       stream), a.calls)))
            if isinstance(run, _replay.Replayer) and run.program is not None:
                steps = run.program[0]
                vals = run.slot_values((x,))
                for step in steps:
                    step(vals)
                for i, step in enumerate(steps):
                    name = {"launch": "Triton launch", "empty": "torch.empty"}.get(step.__name__, "aten op")
                    rows.append((f"{recipe} M={m}", f"  step {i} ({name})",
                                 per_call_us(lambda step=step: step(vals), a.calls)))
            elif isinstance(run, _replay.Replayer):
                rows.append((f"{recipe} M={m}", f"  not replayed: {run.why_plain}", float("nan")))
            rows.append((f"{recipe} M={m}", "nn.Linear", per_call_us(lambda: dense(x), a.calls)))
            if a.api:
                api.append((f"{recipe} M={m}", api_calls(lambda: layer(x))))
                api.append((f"nn.Linear M={m}", api_calls(lambda: dense(x))))
        rows.append(("floor", "x.new_empty((16, 4096))", per_call_us(lambda: x.new_empty((16, 4096)), a.calls)))
    for case, what, us in rows:
        print(f"{case:22s} {what:48s} {us:8.1f} us")
    for case, calls in api:
        print(f"-- {case}: CUDA API calls per module call")
        for name, count, us in calls:
            print(f"   {name:40s} x{count:5.2f} {us:8.2f} us")
    print(f"({torch.cuda.get_device_name()}, torch {torch.__version__}, {a.calls} calls each; raw path: "
          f"{_raw.reason() or 'on'})")


if __name__ == "__main__":
    main()
