"""Where a swapped layer's host time goes, step by step (the rows of benchmarks/overhead_quick.py
that lose to nn.Linear, taken apart).

    python benchmarks/host_breakdown.py [--calls 3000]

For each case (recipe, M; bf16, K = N = 4096) it prints the wall time per call, without waiting
for the GPU inside the loop, of: the module call; the per-layout runner alone (what forward adds
is the difference); and, for a replayed runner (kernelswap.ops._replay), each recorded step alone
(an aten op or a Triton launch), so the steps' sum can be read against the runner's time. Next to
them, nn.Linear on the same input and an empty torch call (x.new_empty) as the floor of one op.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import kernelswap as ks
from kernelswap.ops import _replay
from overhead_quick import host_us as per_call_us  # the same timing loop (benchmarks/ is on sys.path)

CASES = (("sparse24", 1), ("sparse24", 16), ("int8-weight", 16), ("int4", 128), ("int8-weight", 128),
         ("int8", 1), ("int8", 16), ("sparse24-int8", 1), ("int4", 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    a = ap.parse_args()
    k = n = 4096
    rows = []
    with torch.no_grad():
        for recipe, m in CASES:
            dense = nn.Linear(k, n).to("cuda", torch.bfloat16).eval()
            model = nn.Sequential(nn.Linear(k, n)).to("cuda", torch.bfloat16).eval()
            model[0].load_state_dict(dense.state_dict())
            ks.swap(model, recipe, probe=False)
            layer, x = model[0], torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for _ in range(_replay.RETRIES + 2):
                layer(x)
            (run, _), = layer._runs.values()
            rows.append((f"{recipe} M={m}", "module", per_call_us(lambda: layer(x), a.calls)))
            rows.append((f"{recipe} M={m}", f"runner ({type(run).__name__}, {layer.served_by()})",
                         per_call_us(lambda: run(x), a.calls)))
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
        rows.append(("floor", "x.new_empty((16, 4096))", per_call_us(lambda: x.new_empty((16, 4096)), a.calls)))
    for case, what, us in rows:
        print(f"{case:22s} {what:48s} {us:8.1f} us")
    print(f"({torch.cuda.get_device_name()}, torch {torch.__version__}, {a.calls} calls each)")


if __name__ == "__main__":
    main()
