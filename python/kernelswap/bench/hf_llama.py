"""The real client: a Hugging Face LlamaForCausalLM swapped with each recipe, run as users run it.

    python -m kernelswap.bench.hf_llama --out DIR [--layers 4] [--new-tokens 64] [--tiny]

The model is built from a LlamaConfig with Llama-3-8B layer shapes (hidden 4096,
intermediate 14336, 32 heads, 8 KV heads, vocab 128256; `--layers` decoder layers of random
bf16 weights). For bf16, each linear recipe of kernelswap.swap, and torchao's int4 / int8
weight-only configs when torchao is importable, all in one run:
  L1  eager `generate()` (greedy, `--new-tokens` new tokens): ms per new token, measured as
      (time of generating N tokens - time of generating 1) / (N - 1), so prefill is excluded;
      timed in `--rounds` interleaved rounds over all variants (see `run`);
  L2  one decode step with a StaticCache under torch.compile(mode="reduce-overhead",
      fullgraph=True): ms per step (CUDA graphs; torch.compiler.cudagraph_mark_step_begin()
      between steps), each step waited for (as generate() does, to test for a stop token); and
      "L2 pipelined": the same steps issued back to back with one wait at the end, so the host's
      work for a step (the graph tree's launch, the next token's argmax) overlaps the GPU's
      previous one: ms per step as the GPU runs them, host time hidden where it is the smaller;
  L3  prefill of `--prefill` tokens, eager: ms;
plus the last-position logits' cosine and top-1 agreement against bf16 on the same prompt,
and the bytes of weights on the device (with the layouts kernelswap layers prepared). Every
variant is built once and kept on the device; its eager measures are taken before any variant
is compiled. A variant that fails is recorded with its error,
never dropped. `--tiny` runs a small config of the same model through the same code (the
CPU test does; its timings say nothing about GPU speed).
The lm_head (a 128256 x 4096 layer: over a third of the bytes a step reads at 4 layers) stays
bf16 in every variant by default; `--lm-head swap` swaps it too
(kernelswap and torchao alike; names end in " +lm_head") and `--lm-head both` runs both sets.
Writes hf_llama.csv, hf_llama.md and hf_llama.png into --out.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import os
import statistics
import time
from typing import Callable

import torch
from torch import nn

from .hf_llama_report import COLUMNS, write  # noqa: F401  (hf_llama.write, as before)

RECIPES = ("int8", "int8-weight", "int4", "sparse24", "sparse24-int8")
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                vocab_size=128256)
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
PROMPT = 16


def build_model(layers: int, shape: dict, device: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=4096, **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = None
    return model.to(dtype).eval()


LM_HEAD = ("keep", "swap", "both")


def variants(base: nn.Module, lm_head: str = "keep") -> list[tuple[str, Callable[[], nn.Module]]]:
    """(name, build) for bf16, each kernelswap recipe and the torchao peers that import; lm_head
    "keep" leaves the lm_head bf16, "swap" swaps it too (names end in " +lm_head"), "both" gives
    both sets."""
    import kernelswap as ks

    heads = {"keep": (False,), "swap": (True,), "both": (False, True)}[lm_head]
    tag = {False: "", True: " +lm_head"}

    def ours(recipe, head):
        def build():
            m = copy.deepcopy(base)
            ks.swap(m, recipe, filter=lambda name, mod: head or name != "lm_head")
            return m
        return build

    out = [("bf16", lambda: base)] + [(f"kernelswap {r}{tag[h]}", ours(r, h)) for h in heads for r in RECIPES]
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except Exception as e:  # noqa: BLE001 - the peer is optional; installed but broken, it gets a row with why
        import importlib.util
        if importlib.util.find_spec("torchao") is None:
            return out
        why = f"torchao is installed but does not import: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

        def broken():
            raise RuntimeError(why)
        return out + [(f"torchao {name}{tag[h]}", broken) for h in heads for name in ("int4 wo", "int8 wo")]

    def ao(config, head):
        def build():
            m = copy.deepcopy(base)
            quantize_(m, config, filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and (head or fqn != "lm_head"))
            return m
        return build

    return out + [(f"torchao {name}{tag[h]}", ao(config(), h)) for h in heads
                  for name, config in (("int4 wo", lambda: Int4WeightOnlyConfig(group_size=128)),
                                       ("int8 wo", Int8WeightOnlyConfig))]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _seconds(fn: Callable, device: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def l1_generate_seconds(model, ids, new_tokens: int, device: str) -> tuple[float, float]:
    """One sample of eager generate(): (seconds for `new_tokens` tokens, seconds for 1 token)."""
    def gen(n):
        return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return _seconds(gen(new_tokens), device, 1), _seconds(gen(1), device, 1)


def l1_warm_up(model, ids, new_tokens: int) -> None:
    """Kernels compile and load, runners bind (and replayed runners record) before any timing."""
    for n in (2, new_tokens):
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def l1_interleaved(models: dict[str, nn.Module], ids, new_tokens: int, device: str, rounds: int,
                   guard: Callable[[str, Callable], None] = lambda name, fn: fn()
                   ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """L1 of each model (ms per new token), timed in `rounds` interleaved rounds: each round takes one
    sample (l1_generate_seconds) of every model in turn, and a model's L1 is (best N-token time -
    best 1-token time) / (N - 1). Returns ({name: L1}, {name: each round's own L1}). guard(name, fn)
    runs a model's sample (hf_llama.run records a failure there instead of raising)."""
    best: dict[str, list[float]] = {}
    per_round: dict[str, list[float]] = {}
    for _ in range(max(1, rounds)):
        for name, model in models.items():
            def sample(name=name, model=model):
                t_n, t_1 = l1_generate_seconds(model, ids, new_tokens, device)
                per_round.setdefault(name, []).append((t_n - t_1) / (new_tokens - 1) * 1e3)
                b = best.setdefault(name, [t_n, t_1])
                b[:] = [min(b[0], t_n), min(b[1], t_1)]
            guard(name, sample)
    return {name: (t_n - t_1) / (new_tokens - 1) * 1e3 for name, (t_n, t_1) in best.items()}, per_round


def _cache_kw(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def l2_stepper(model, ids, steps: int, device: str, compile_mode: str | None) -> Callable[[], None]:
    """One decode step against a StaticCache (room for `steps` + 8 tokens past the prompt), the step
    compiled (reduce-overhead on CUDA): each call of the returned function decodes the next token
    (torch.compiler.cudagraph_mark_step_begin() first on CUDA)."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + steps + 8)
    kw = _cache_kw(model)
    prompt = ids.shape[1]
    logits = model(input_ids=ids, position_ids=torch.arange(prompt, device=ids.device)[None],
                   cache_position=torch.arange(prompt, device=ids.device), use_cache=True, **{kw: cache}).logits

    def step(tok, pos):
        return model(input_ids=tok, position_ids=pos[None], cache_position=pos, use_cache=True, **{kw: cache}).logits

    # On CPU (the smoke run) dynamo traces the same step with fullgraph=True, so a graph break
    # still fails, but no code is generated (backend "eager"): inductor's CPU compile of every
    # variant would take minutes.
    compiled = (torch.compile(step, mode=compile_mode, fullgraph=True) if compile_mode
                else torch.compile(step, backend="eager", fullgraph=True))
    state = {"tok": logits[:, -1:].argmax(-1), "pos": prompt}

    def advance() -> None:
        pos = torch.tensor([state["pos"]], device=ids.device)
        if device == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        state["tok"] = compiled(state["tok"], pos)[:, -1:].argmax(-1)
        state["pos"] += 1
    return advance


def l2_static_compiled_step_ms(model, ids, steps: int, device: str, compile_mode: str | None) -> tuple[float, float]:
    """(median wall time of a decode step of l2_stepper, each step waited for; wall time per step of
    `steps` steps issued back to back, one wait at the end), after 3 warm-up steps."""
    advance = l2_stepper(model, ids, 2 * steps + 3, device, compile_mode)
    times = []
    for i in range(3 + steps):
        _sync(device)
        t0 = time.perf_counter()
        advance()
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        advance()
    _sync(device)
    return statistics.median(times) * 1e3, (time.perf_counter() - t0) / steps * 1e3


def l3_prefill_ms(model, tokens: int, vocab: int, device: str, reps: int) -> float:
    ids = torch.randint(0, vocab, (1, tokens), device=device)
    model(input_ids=ids)  # warm-up
    return _seconds(lambda: model(input_ids=ids), device, reps) * 1e3


def weight_bytes(model: nn.Module) -> int:
    """Parameters and buffers, plus the layouts kernelswap layers prepared from them."""
    from kernelswap.nn import KernelswapModule

    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total + sum(m.prepared_bytes() for m in model.modules() if isinstance(m, KernelswapModule))


def profile_generate(model, ids, new_tokens: int, top: int = 15) -> str:
    """cProfile of one eager generate(): where the host time of a decode step goes."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _guarded(row: dict, fn: Callable) -> None:
    """Run fn(); an exception is recorded in row["error"] (the variant is never dropped)."""
    if "error" in row:
        return
    try:
        with torch.no_grad():
            fn()
    except Exception as e:  # noqa: BLE001 - record the failure, keep going
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    finally:
        torch._dynamo.reset()


def _first_look(row: dict, model, ids, ref: dict) -> None:
    row["weight_bytes"] = weight_bytes(model)
    logits = model(input_ids=ids).logits[0, -1].float()
    ref.setdefault("logits", logits)
    row["cosine_vs_bf16"] = float(torch.nn.functional.cosine_similarity(logits, ref["logits"], dim=0))
    row["top1_agrees"] = int(logits.argmax() == ref["logits"].argmax())


def run(layers: int, shape: dict, device: str, new_tokens: int, prefill: int, steps: int, reps: int,
        log: Callable[[str], None] = print, measures: tuple[str, ...] = ("L1", "L2", "L3"),
        only: tuple[str, ...] = (), profile_to: str = "", rounds: int = 5,
        checkpoint: Callable[[list[dict]], None] | None = None, lm_head: str = "keep") -> list[dict]:
    """Every variant is built once and kept on the device. Its eager measures (L1, L3) are taken
    before any variant is compiled (L2), so no eager figure, the baseline's included, comes from a
    process that has already compiled.

    L1 is timed interleaved: `rounds` rounds, each taking one sample of every variant in turn (one
    generate() of `new_tokens` tokens and one of 1 token). A host whose speed drifts over seconds
    (seen on the H200 machine: the same bf16 model 4.3 and 7.7 ms/token a minute apart) then
    weighs on all variants alike. L1 = (best N-token time - best 1-token time) / (N - 1): host
    noise only ever adds time, so the best sample of each is the least disturbed one. Every
    round's own L1 is kept in the row (L1_rounds_ms). checkpoint(rows), when given, is called after
    the eager measures and after each compiled variant (so a run stopped by a time limit keeps
    what it measured)."""
    checkpoint = checkpoint or (lambda rows: None)
    base = build_model(layers, shape, device, torch.bfloat16)
    ids = torch.randint(0, shape["vocab_size"], (1, PROMPT), device=device)
    chosen = [(n, b) for n, b in variants(base, lm_head) if not only or n == "bf16" or any(o in n for o in only)]
    dev = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = [{"variant": n, "layers": layers, "device": dev} for n, _ in chosen]
    models: dict[str, nn.Module] = {}
    ref: dict = {}
    for row, (name, build) in zip(rows, chosen):
        def setup(row=row, name=name, build=build):
            models[name] = build()
            _first_look(row, models[name], ids, ref)
            if "L1" in measures:
                l1_warm_up(models[name], ids, new_tokens)
        _guarded(row, setup)
    live = [(row, models[row["variant"]]) for row in rows if "error" not in row]
    if "L1" in measures:
        by_name = {row["variant"]: row for row, _ in live}
        ms, per_round = l1_interleaved({row["variant"]: model for row, model in live}, ids, new_tokens, device,
                                       rounds, guard=lambda name, fn: _guarded(by_name[name], fn))
        for name, row in by_name.items():
            if name in per_round:
                row["L1_rounds_ms"] = per_round[name]
            if name in ms and "error" not in row:
                row["L1_ms_per_token"] = ms[name]
    for row, model in live:
        if profile_to and "L1" in measures:
            def prof(row=row, model=model):
                with open(profile_to, "a") as f:
                    f.write(f"==== {row['variant']}: one generate() of {new_tokens} tokens\n")
                    f.write(profile_generate(model, ids, new_tokens))
            _guarded(row, prof)
        if "L3" in measures:
            _guarded(row, lambda row=row, model=model: row.__setitem__(
                "L3_prefill_ms", l3_prefill_ms(model, prefill, shape["vocab_size"], device, reps)))
    checkpoint(rows)
    if "L2" in measures:
        mode = "reduce-overhead" if device == "cuda" else None
        for row, model in live:
            def l2(row=row, model=model):
                row["L2_ms_per_step"], row["L2_pipelined_ms_per_step"] = l2_static_compiled_step_ms(
                    model, ids, steps, device, mode)
            _guarded(row, l2)
            checkpoint(rows)
    for row in rows:
        log("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of L1 samples over all variants")
    ap.add_argument("--measures", default="L1,L2,L3", help="which of L1, L2, L3 to time")
    ap.add_argument("--variants", default="", help="comma-separated substrings: only these variants (and bf16)")
    ap.add_argument("--profile", default="", help="append a cProfile of one generate() per variant to this file")
    ap.add_argument("--lm-head", choices=LM_HEAD, default="keep",
                    help="keep the lm_head bf16 (default), swap it too, or run both sets of variants")
    ap.add_argument("--tiny", action="store_true", help="a small config of the same model (CPU smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    shape = TINY if a.tiny else LLAMA_8B
    import kernelswap
    dev = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    header = (f"HF LlamaForCausalLM, {a.layers} layers, {'tiny config' if a.tiny else 'Llama-3-8B layer shapes'}, "
              f"bf16, {dev}, torch {torch.__version__}, kernelswap {kernelswap.__version__}")
    rows = run(a.layers, shape, a.device, a.new_tokens, a.prefill, a.steps, a.reps,
               measures=tuple(a.measures.split(",")), only=tuple(v for v in a.variants.split(",") if v),
               profile_to=a.profile, rounds=a.rounds, checkpoint=lambda rows: write(rows, a.out, header),
               lm_head=a.lm_head)
    write(rows, a.out, header)
    print(open(os.path.join(a.out, "hf_llama.md")).read())


if __name__ == "__main__":
    main()
