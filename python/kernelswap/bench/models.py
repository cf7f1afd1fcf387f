"""Whole-model benchmarks: torchvision CNNs and a Llama-style decoder stack.

CNNs (MobileNetV2, ResNet-50; random weights; channels_last; bf16) at batch 1 and 64:
  eager, bn-folded (torch.fx conv+bn fusion), compile (torch.compile of eager),
  swap-fuse (kernelswap.swap(model, "fuse")), and at batch 1 the CUDA-graphed
  bn-folded and swap-fuse models (TARGETS.md P11's peer is BN-folded + CUDA graph).
Decoder: LLAMA_LAYERS layers with Llama-3 8B shapes in plain torch; prefill of 4096
  tokens and decode steps of 1 and 16 sequences against a KV cache (eager and
  CUDA-graphed), for bf16 and every linear recipe of kernelswap.swap.
Each variant is built, timed and freed before the next, so peak memory is its own.
A variant that cannot be built is recorded (unavailable / error), never dropped.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .runner import SLOW_RESERVE_S, Runner, short_error
from .timing import capture_graph

CNNS = {"mobilenetv2": "mobilenet_v2", "resnet50": "resnet50"}
CNN_BATCHES = (1, 64)
LINEAR_RECIPES = ("int8", "int8-weight", "int4", "sparse24", "sparse24-int8")
# Two layers carry every linear shape of the 8B model; more only repeat them.
LLAMA_LAYERS = 2
LLAMA = dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336)
KV_CACHE_LEN = 1024  # decode steps attend to this many cached positions
PREFILL_TOKENS = 4096
DECODE_BATCHES = (1, 16)


def swap_fn() -> tuple[Callable | None, str]:
    """kernelswap.swap.swap, or None and why not."""
    try:
        from kernelswap.swap import swap
    except Exception as e:  # noqa: BLE001 - the swap API may not be there yet
        return None, f"unavailable: kernelswap.swap not importable ({short_error(e)})"
    return swap, ""


def module_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def _swapped(swap: Callable, model: nn.Module, recipe: str) -> nn.Module:
    out = swap(model, recipe)
    return out if isinstance(out, nn.Module) else model  # swap() converts in place and returns a report


def _graphed(model: Callable, x: torch.Tensor) -> Callable:
    """Capture one forward in a CUDA graph; replays read the static input."""
    if not x.is_cuda:
        raise RuntimeError("CUDA graphs need a CUDA device")
    static_x = x.clone()
    graph, _ = capture_graph(lambda: model(static_x))
    return graph.replay


def time_variant(runner: Runner, op: str, shape: str, variant: str, build: Callable[[], tuple[Callable, int]],
                 items: int, unit: str, dtype: str = "bf16", slow: bool = False, note: str = "",
                 defer: bool = True) -> None:
    """build() -> (the call to time, weight bytes). One row, whatever happens."""
    base = dict(op=op, provider=variant, kind="model", shape=shape, dtype=dtype)
    if runner.budget.spent():
        runner.row(**base, status="skipped", note="time budget spent")
        return
    if slow and runner.quick:
        runner.row(**base, status="skipped", note="--quick leaves out variants that compile")
        return
    if slow and defer:  # compile pass: after everything else
        runner.defer(lambda: time_variant(runner, op, shape, variant, build, items, unit, dtype, slow, note,
                                          defer=False))
        return
    if slow and runner.budget.left() < SLOW_RESERVE_S:
        runner.row(**base, status="skipped", note=f"under {SLOW_RESERVE_S} s of budget left for a compile")
        return
    cuda = runner.device.type == "cuda"
    try:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            # first_s: from the copy of the model to its first answer (swap or fuse, graph capture, and
            # the first call's compiles, autotuning and timed picks): what a user waits for once.
            start = time.perf_counter()
            fn, weight_bytes = build()
            fn()
            if cuda:
                torch.cuda.synchronize()
            first_s = time.perf_counter() - start
            if hasattr(runner.timer, "label"):
                runner.timer.label = f"{op}|{variant}|{shape}|{dtype}"
            t = runner.timer(fn)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    except Exception as e:  # noqa: BLE001 - recorded with its error
        msg = short_error(e)
        status = "unavailable" if msg.startswith("RuntimeError: unavailable") else "error"
        runner.row(**base, status=status, note=msg.removeprefix("RuntimeError: "))
        return
    finally:
        from .runner import _free
        _free(runner.device)
    runner.row(**base, status="ok", p50_us=t.p50_us, p20_us=t.p20_us, p80_us=t.p80_us,
               throughput=items / (t.p50_us * 1e-6), throughput_unit=unit, weight_mb=weight_bytes / 2**20,
               peak_mem_mb=peak, first_s=first_s, note=note)


def _need(fn):
    if fn is None:
        raise RuntimeError(swap_fn()[1])
    return fn


# ---------------------------------------------------------------- CNNs
def cnn_variants(base: nn.Module, x: torch.Tensor, swap: Callable | None) -> list[tuple[str, Callable, bool]]:
    """(name, build, compiles) for one model and one input. Each build binds this call's base and x,
    so a build deferred to the compile pass still times its own model and batch."""
    def on_device(m):
        return m.to(device=x.device, dtype=x.dtype, memory_format=torch.channels_last).eval()

    def eager():
        m = on_device(copy.deepcopy(base))
        return (lambda: m(x)), module_bytes(m)

    def folded(graph=False):
        from torch.fx.experimental.optimization import fuse
        m = on_device(fuse(copy.deepcopy(base)))
        return (_graphed(m, x) if graph else lambda: m(x)), module_bytes(m)

    def compiled():
        m = on_device(copy.deepcopy(base))
        c = torch.compile(m)
        return (lambda: c(x)), module_bytes(m)

    def swapped(graph=False):
        m = _swapped(_need(swap), on_device(copy.deepcopy(base)), "fuse")
        return (_graphed(m, x) if graph else lambda: m(x)), module_bytes(m)

    variants = [("eager", eager, False), ("bn-folded", folded, False), ("swap-fuse", swapped, False)]
    if x.shape[0] == 1:
        variants += [("bn-folded+graph", lambda: folded(True), False),
                     ("swap-fuse+graph", lambda: swapped(True), False)]
    return variants + [("compile", compiled, True)]


def run_cnns(runner: Runner, names=tuple(CNNS), batches=CNN_BATCHES, dtype=torch.bfloat16, resolution=224) -> None:
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001
        for name in names:
            for b in batches:
                runner.row(op=f"model:{name}", provider="all", kind="model", shape=f"b{b}", dtype="bf16",
                           status="unavailable", note=f"torchvision not importable ({short_error(e)})")
        return
    swap, _ = swap_fn()
    for name in names:
        base = getattr(torchvision.models, CNNS[name])(weights=None).eval()
        for b in batches:
            x = torch.randn(b, 3, resolution, resolution, device=runner.device, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            for variant, build, slow in cnn_variants(base, x, swap):
                time_variant(runner, f"model:{name}", f"b{b}", variant, build, b, "images/s", slow=slow)


# ---------------------------------------------------------------- Llama-style decoder
class DecoderLayer(nn.Module):
    """Pre-norm attention (GQA) + SwiGLU MLP, Llama-3 8B shapes, plain torch."""

    def __init__(self, hidden, heads, kv_heads, head_dim, intermediate):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.attn_norm, self.mlp_norm = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x, cache=None):  # x (B, T, hidden); cache: (k, v) each (B, kv_heads, L, head_dim)
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if cache is None:  # prefill: causal over the prompt
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # decode: the new token is written into the cache's last slot
            ck, cv = cache
            ck[:, :, -t:], cv[:, :, -t:] = k, v
            a = F.scaled_dot_product_attention(q, ck, cv, enable_gqa=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, -1))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Decoder(nn.Module):
    def __init__(self, layers=LLAMA_LAYERS, **shape):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(**(shape or LLAMA)) for _ in range(layers))

    def forward(self, x, caches=None):
        for i, layer in enumerate(self.layers):
            x = layer(x, None if caches is None else caches[i])
        return x


def run_decoder(runner: Runner, recipes=LINEAR_RECIPES, layers=LLAMA_LAYERS, shape=None, prefill=PREFILL_TOKENS,
                decode=DECODE_BATCHES, cache_len=KV_CACHE_LEN, dtype=torch.bfloat16) -> None:
    """Per recipe: swap a copy of the bf16 stack once, then time prefill and each decode batch."""
    device, shape = runner.device, shape or LLAMA
    op = f"model:llama{layers}L-8b"
    swap, _ = swap_fn()
    torch.manual_seed(0)
    with torch.device(device):
        base = Decoder(layers, **shape).to(dtype).eval()
    cases = [(f"prefill-m{prefill}", 1, prefill)] + [(f"decode-m{m}", m, 1) for m in decode]
    for recipe in ("bf16",) + tuple(recipes):
        model, why = base, ""
        if recipe != "bf16" and not runner.budget.spent():
            try:
                model = _swapped(_need(swap), copy.deepcopy(base), recipe)
            except Exception as e:  # noqa: BLE001 - every case of this recipe records why
                model, why = None, short_error(e)
        # Decode steps also run CUDA-graphed: at M = 1 launch overhead is a large part of eager time.
        variants = [(case, batch, tokens, graph) for case, batch, tokens in cases
                    for graph in ((False, True) if tokens == 1 else (False,))]
        for case, batch, tokens, graph in variants:
            def build(model=model, why=why, batch=batch, tokens=tokens, graph=graph):
                if model is None:
                    raise RuntimeError(why.removeprefix("RuntimeError: "))
                x = torch.randn(batch, tokens, shape["hidden"], device=device, dtype=dtype)
                caches = None
                if tokens == 1:
                    kv = (batch, shape["kv_heads"], cache_len, shape["head_dim"])
                    caches = [(torch.randn(kv, device=device, dtype=dtype), torch.randn(kv, device=device, dtype=dtype))
                              for _ in range(layers)]
                fn = _graphed(lambda inp: model(inp, caches), x) if graph else (lambda: model(x, caches))
                return fn, module_bytes(model)

            note = f"{layers} layers; " + ("causal prompt" if tokens > 1 else f"KV cache {cache_len}")
            time_variant(runner, op, case, recipe + ("+graph" if graph else ""), build, batch * tokens, "tokens/s",
                         note=note)
        del model
    del base
