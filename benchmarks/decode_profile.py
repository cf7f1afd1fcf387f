"""Where an eager decode step of the HF Llama goes: GPU kernel time against wall time, per variant,
and what one swapped layer costs inside the model.

    python benchmarks/decode_profile.py [--variants int8-weight,int4] [--tokens 32] [--rounds 5] [--compiled]

Builds the model of kernelswap.bench.hf_llama (Llama-3-8B layer shapes, random bf16 weights) and,
beside bf16 and each chosen variant, a "null linear" one: every Linear but lm_head replaced by
a module that returns a kept output tensor (no kernel, the least a Python module call costs).
All are kept on the GPU and timed interleaved, as hf_llama's L1: `--rounds` rounds of one
generate() of `--tokens` tokens and one of 1 each, the best sample of each kept. Printed per
variant: ms per new token; per-layer cost in the model, (variant - null) / layers swapped, in
us (bf16's is nn.Linear's own cost there, so a variant whose per-layer cost is below bf16's
spends less host and GPU time per layer than nn.Linear). Then one generate() of each under
torch.profiler: the summed GPU kernel time per token (near the wall time: GPU bound; far below:
host bound) and the kernels and host ops that take the most.
With --compiled, only the profile, of hf_llama's L2 decode step instead (StaticCache, the step
under torch.compile(mode="reduce-overhead"), so replayed from a CUDA graph): the GPU time a step
costs each variant, kernel by kernel.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from kernelswap.bench import hf_llama


class NullLinear(nn.Module):
    """Returns a kept (..., out_features) tensor: a module call with no kernel behind it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features = linear.out_features
        self.kept: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.kept.get(x.shape)
        if out is None:
            out = self.kept[x.shape] = x.new_zeros((*x.shape[:-1], self.out_features))
        return out


def null_model(base: nn.Module) -> tuple[nn.Module, int]:
    m = copy.deepcopy(base)
    names = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear) and n != "lm_head"]
    for n in names:
        parent, _, child = n.rpartition(".")
        holder = m.get_submodule(parent) if parent else m
        setattr(holder, child, NullLinear(getattr(holder, child)))
    return m, len(names)


def _kernel_us(evt) -> float:
    """A GPU kernel's (or memcpy's) own time; 0 for host ops, whose device time is their kernels'
    (counted as those kernels' own rows)."""
    if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
        return 0.0
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


LINEAR_KERNELS = ("nvjet", "gemm", "gemv", "cutlass", "splitkreduce", "kernelswap", "quantize", "w4a16", "w8a16",
                  "sparse24", "int8", "fp8", "cslt", "sm90_xmma", "tinygemm")


def _is_linear_kernel(name: str) -> bool:
    """Whether a kernel's name marks it as a linear layer's work (by the names cuBLAS, cuSPARSELt, CUTLASS and
    kernelswap's kernels carry)."""
    low = name.lower()
    return any(tag in low for tag in LINEAR_KERNELS)


def profile_one(name: str, model, ids, tokens: int, top: int, compiled: bool = False) -> None:
    """One generate() of `tokens` tokens under torch.profiler; compiled: `tokens` decode steps of
    hf_llama's L2 instead (StaticCache, torch.compile reduce-overhead: CUDA-graph replays), after
    3 steps that record the graph and `tokens` steps timed one by one (wall time, the stream
    drained around each: hf_llama's L2 measure)."""
    wall = ""
    if compiled:
        advance = hf_llama.l2_stepper(model, ids, 2 * tokens + 3, "cuda", "reduce-overhead")
        for _ in range(3):
            advance()
        times = []
        for _ in range(tokens):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            advance()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        wall = f", wall {statistics.median(times) * 1e3:.3f} ms/step (median of {tokens})"
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        if compiled:
            for _ in range(tokens):
                advance()
        else:
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        torch.cuda.synchronize()
    if compiled:
        torch._dynamo.reset()
    avgs = prof.key_averages()
    kernels = sorted(((e.key, _kernel_us(e), e.count) for e in avgs if _kernel_us(e) > 0), key=lambda t: -t[1])
    what = "L2 step (compiled, graph replay)" if compiled else "token"
    print(f"==== {name}: GPU kernels {sum(us for _, us, _ in kernels) / tokens / 1e3:.3f} ms/{what} (profiled){wall}")
    linear = sum(us for key, us, _ in kernels if _is_linear_kernel(key))
    print(f"   of which linear-layer kernels (GEMM, GEMV, their split-K reductions and activation quantization; "
          f"lm_head included) {linear / tokens / 1e3:.3f} ms, the rest {(sum(us for _, us, _ in kernels) - linear) / tokens / 1e3:.3f} ms")
    for key, us, count in kernels[:top]:
        print(f"   gpu {us / tokens:9.1f} us/token  x{count // tokens:<4d} {key[:90]}")
    for e in sorted(avgs, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"   cpu {e.self_cpu_time_total / tokens:9.1f} us/token  x{e.count // tokens:<4d} {e.key[:90]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="int8-weight,int4")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--compiled", action="store_true",
                    help="profile hf_llama's L2 step (StaticCache, torch.compile reduce-overhead) instead of "
                         "eager generate(); the interleaved eager timing is skipped")
    a = ap.parse_args()
    base = hf_llama.build_model(a.layers, hf_llama.LLAMA_8B, "cuda", torch.bfloat16)
    ids = torch.randint(0, hf_llama.LLAMA_8B["vocab_size"], (1, hf_llama.PROMPT), device="cuda")
    only = [v for v in a.variants.split(",") if v]
    models: dict[str, nn.Module] = {}
    with torch.no_grad():
        models["null linear"], swapped = null_model(base)
        for name, build in hf_llama.variants(base):
            if name == "bf16" or any(name.endswith(" " + v) for v in only):
                try:
                    models[name] = build()
                except Exception as e:  # noqa: BLE001 - report and go on to the next variant
                    print(f"==== {name}: {type(e).__name__}: {e}")
        if a.compiled:
            del models["null linear"]
            for name, m in models.items():
                profile_one(name, m, ids, a.tokens, a.top, compiled=True)
            return
        for m in models.values():
            hf_llama.l1_warm_up(m, ids, a.tokens)
        ms, _ = hf_llama.l1_interleaved(models, ids, a.tokens, "cuda", a.rounds)
        print(f"{'variant':28s} {'ms/token':>9s} {'us a layer in the model':>24s}  "
              f"({swapped} layers, {a.rounds} interleaved rounds, {torch.cuda.get_device_name()})")
        for name, v in ms.items():
            per_layer = (v - ms["null linear"]) * 1e3 / swapped
            print(f"{name:28s} {v:9.3f} {per_layer:24.1f}")
        for name, m in models.items():
            profile_one(name, m, ids, a.tokens, a.top)


if __name__ == "__main__":
    main()
