"""Where an eager decode step of the HF Llama goes: GPU kernel time against wall time, per variant.

    python benchmarks/decode_profile.py [--variants int8-weight,int4] [--tokens 16] [--layers 4]

Builds the model of kernelswap.bench.hf_llama (Llama-3-8B layer shapes, random bf16 weights),
and for bf16 and each chosen variant runs one eager generate() of `--tokens` new tokens under
torch.profiler. It prints, per new token: the wall time, the summed GPU kernel time (if the
kernels' time is near the wall time the step is GPU bound, else host bound), and the kernels
and host ops that take the most. A step whose GPU time is below its wall time by the same
margin as bf16's loses on host time; one whose kernels take longer loses on the kernels.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from kernelswap.bench import hf_llama


def _kernel_us(evt) -> float:
    """A GPU kernel's (or memcpy's) own time; 0 for host ops, whose device time is their kernels'
    (counted as those kernels' own rows)."""
    if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
        return 0.0
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def one(name: str, model, ids, tokens: int, top: int) -> None:
    def gen(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    gen(2)
    gen(tokens)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gen(tokens)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / tokens * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        gen(tokens)
        torch.cuda.synchronize()
    avgs = prof.key_averages()
    kernels = sorted(((e.key, _kernel_us(e), e.count) for e in avgs if _kernel_us(e) > 0),
                     key=lambda t: -t[1])
    gpu_ms = sum(us for _, us, _ in kernels) / tokens / 1e3
    print(f"==== {name}: wall {wall:.3f} ms/token, GPU kernels {gpu_ms:.3f} ms/token")
    for key, us, count in kernels[:top]:
        print(f"   gpu {us / tokens:9.1f} us/token  x{count // tokens:<4d} {key[:90]}")
    host = sorted(avgs, key=lambda e: -e.self_cpu_time_total)[:top]
    for e in host:
        print(f"   cpu {e.self_cpu_time_total / tokens:9.1f} us/token  x{e.count // tokens:<4d} {e.key[:90]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="int8-weight,int4")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    base = hf_llama.build_model(a.layers, hf_llama.LLAMA_8B, "cuda", torch.bfloat16)
    ids = torch.randint(0, hf_llama.LLAMA_8B["vocab_size"], (1, hf_llama.PROMPT), device="cuda")
    only = [v for v in a.variants.split(",") if v]
    with torch.no_grad():
        for name, build in hf_llama.variants(base):
            if name == "bf16" or any(name.endswith(" " + v) for v in only):
                try:
                    one(name, build(), ids, a.tokens, a.top)
                except Exception as e:  # noqa: BLE001 - report and go on to the next variant
                    print(f"==== {name}: {type(e).__name__}: {e}")
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
