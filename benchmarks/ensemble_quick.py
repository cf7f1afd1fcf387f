"""ks.ensemble against a Python loop over the same members: four MiniLM-sized encoders and four
ResNet-18-sized CNNs, batch 1 and 16.

    python benchmarks/ensemble_quick.py [--out DIR] [--iters N] [--dtype bf16] [--swap RECIPE]

Each member has random weights (BatchNorm statistics randomized too); the members of one row are
of one architecture, so the ensemble runs them as one stacked computation (each layer one
batched kernel). The loop is what a user writes without it: call each member, stack the
outputs, take the mean. Both are timed with CUDA events after a warm-up (median, p20, p80 of
--iters calls), and their outputs compared (max |difference|). Where kernelswap.capture exists,
both are also timed replayed as CUDA graphs (ks.capture). --swap RECIPE adds rows where every
member is swapped with RECIPE first: those members run one call each, on their own CUDA streams.
The "ensemble-streams" rows are ks.ensemble(..., batched=False): every member its own call on its
own stream, no stacking (what swapped members get), for comparison with the stacked rows.
The "floor-1-member-at-MxB" rows (float members only) time the work's floor: one member at batch
members x B (channels_last for the CNN on a GPU), as much compute with no member bookkeeping;
their output is one member's, so they have no max |difference|.

Encoder: BERT with all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, FFN 1536,
vocab 30522), 128 tokens, mean-pooled; attention "eager" (matmul + softmax, which vmap batches;
--attn sdpa tries scaled_dot_product_attention instead). CNN: torchvision ResNet-18, 224x224.
Target (issue 19): the ensemble >= 2.5x faster than the loop at batch 1 and 16.

Prints a table; with --out DIR writes DIR/ensemble_quick.csv (one row per case, tagged with the
GPU, torch version, commit and date). --device cpu runs a smoke test (use a small --iters).
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import os

import numpy as np
import torch
from torch import nn

import kernelswap as ks
from kernelswap.bench.env import commit
from kernelswap.evaluate._measure import time_calls

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Encoder(nn.Module):
    """A MiniLM-shaped BertModel with random weights -> (B, 384) mean-pooled embedding."""

    def __init__(self, attn: str, layers: int = 6):
        super().__init__()
        import transformers
        cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=layers,
                                      num_attention_heads=12, intermediate_size=1536, attn_implementation=attn)
        self.bert = transformers.BertModel(cfg, add_pooling_layer=False)

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).last_hidden_state.mean(dim=1)


def resnet18() -> nn.Module:
    import torchvision
    m = torchvision.models.resnet18()
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 2.0)
    return m


def time_ms(fn, device, iters: int, warmup: int = 10) -> list[float]:
    """ms per call: CUDA events on the GPU, perf_counter on the CPU (ks.evaluate's timer)."""
    return time_calls(fn, device, iters, warmup)


def captured(fn_module, x):
    """ks.capture's replay of a module, or None where the capture API is not there."""
    try:
        from kernelswap.capture import capture
    except ImportError:
        return None
    return capture(fn_module, x)


class Loop(nn.Module):
    """What a user writes without ks.ensemble: every member, then the mean."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


class OneAtMB(nn.Module):
    """The work's floor: one member (a copy, channels_last for a CNN on a GPU) at batch M*B, as
    much compute as the M members at B with no member bookkeeping. Its output is not the
    ensemble's (one member's weights): timed only."""

    def __init__(self, member: nn.Module, m: int, channels_last: bool):
        super().__init__()
        self.model, self.m, self.cl = copy.deepcopy(member), m, channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x):
        xs = x.repeat(self.m, *([1] * (x.dim() - 1)))
        if self.cl:
            xs = xs.contiguous(memory_format=torch.channels_last)
        y = self.model(xs)
        return y.reshape(self.m, -1, *y.shape[1:]).mean(0)


def case(family: str, batch: int, args, device, dtype, swap: str | None) -> list[dict]:
    torch.manual_seed(0)
    if family == "minilm-encoder":
        members = [Encoder(args.attn) for _ in range(args.members)]
        x = torch.randint(0, 30522, (batch, args.tokens), device=device)
    else:
        members = [resnet18() for _ in range(args.members)]
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    members = [m.to(device=device, dtype=dtype).eval() for m in members]
    if swap:
        for m in members:
            ks.swap(m, swap.split("+"), probe=False)
    loop = Loop(members).eval()
    streams = ks.ensemble(members, "mean", batched=False)  # every member on its own CUDA stream
    ens = ks.ensemble(members, "mean")  # same-architecture float members stacked and folded (channel / batch)
    vmapped = ks.ensemble(members, "mean", fold=False)  # stacked, under vmap
    with torch.inference_mode():
        want = loop(x).float()
        rows = []
        runs = [("loop", loop, loop), ("ensemble", ens, ens), ("ensemble-vmap", vmapped, vmapped),
                ("ensemble-streams", streams, streams)]
        if not swap:
            floor = OneAtMB(members[0], args.members, x.dim() == 4 and x.is_cuda).eval()
            runs.append(("floor-1-member-at-MxB", floor, floor))
        for name, mod, _ in list(runs):
            try:
                g = captured(mod, x)
            except Exception as e:  # noqa: BLE001 - report, keep going
                print(f"  {family} b{batch} {name}: ks.capture failed: {type(e).__name__}: {e}")
                g = None
            if g is not None:
                runs.append((f"{name}+capture", mod, g))
        for name, mod, fn in runs:
            diff = float((fn(x).float() - want).abs().max()) if "floor" not in name else float("nan")
            t = time_ms(lambda: fn(x), device, args.iters)
            rows.append({"family": family, "members": args.members, "batch": batch, "recipe": swap or "float",
                         "dtype": args.dtype, "how": name, "median_ms": float(np.median(t)),
                         "p20_ms": float(np.percentile(t, 20)), "p80_ms": float(np.percentile(t, 80)),
                         "max_abs_diff_vs_loop": diff, "loop_max_abs": float(want.abs().max()),
                         "batched_groups": str(getattr(mod, "batched_groups", "-")),
                         "folded": _folded(mod, x)})
    # Each row against the loop timed the same way (eager against eager, captured against captured).
    base = {"+capture" in r["how"]: r["median_ms"] for r in rows if r["how"].startswith("loop")}
    for r in rows:
        r["speedup_vs_loop"] = base.get("+capture" in r["how"], float("nan")) / r["median_ms"]
    return rows


def _folded(mod, x) -> str:
    """What served the ensemble's stacked group for this input (channel fold, batch fold, vmap), and
    why it has no fold where it has none."""
    served = getattr(mod, "served_by", None)
    if served is None or not mod.batched_groups:
        return "-"
    reasons = [r for r in mod.fold_reasons if r]
    return "; ".join(served(x) + reasons)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", metavar="DIR", help="write DIR/ensemble_quick.csv")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--attn", choices=("eager", "sdpa"), default="eager")
    p.add_argument("--families", default="minilm-encoder,resnet18")
    p.add_argument("--swap", metavar="RECIPE", help="also time members swapped with RECIPE ('+' combines)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    rows = []
    for family in args.families.split(","):
        for batch in map(int, args.batches.split(",")):
            for swap in [None] + ([args.swap] if args.swap else []):
                try:
                    got = case(family, batch, args, device, dtype, swap)
                except Exception as e:  # noqa: BLE001 - report the case, keep the others
                    print(f"  {family} b{batch} {swap or 'float'}: failed: {type(e).__name__}: {e}")
                    continue
                for r in got:
                    print(f"  {family} b{batch} {r['recipe']} {r['how']}: {r['median_ms']:.3f} ms, "
                          f"{r['speedup_vs_loop']:.2f}x the loop", flush=True)
                rows += got
    env = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "commit": commit(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    head = ("family", "batch", "recipe", "how", "median_ms", "p20_ms", "p80_ms", "speedup_vs_loop",
            "max_abs_diff_vs_loop", "folded")
    print(f"{env['gpu']}, torch {env['torch']}, commit {env['commit']}, {args.members} members, {args.dtype}")
    print("  ".join(f"{h:>14}" for h in head))
    for r in rows:
        print("  ".join(f"{r[h]:>14.4g}" if isinstance(r[h], float) else f"{r[h]!s:>14}" for h in head))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "ensemble_quick.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*rows[0], *env])
            w.writeheader()
            w.writerows({**r, **env} for r in rows)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
