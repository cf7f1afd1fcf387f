"""`python -m kernelswap evaluate`: ks.evaluate on a bundled or local model; writes report.md,
report.json and PNG plots to --out."""
from __future__ import annotations

import argparse
import os
import sys

import torch

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _to(batch, device, dtype):
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    return tuple(move(t) for t in batch) if isinstance(batch, tuple) else move(batch)


def main(argv: list[str] | None = None) -> int:
    from . import evaluate
    from ._models import MODELS, load

    p = argparse.ArgumentParser(prog="python -m kernelswap evaluate", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help=f"one of {', '.join(MODELS)} (default mobilenet_v2)")
    src.add_argument("--hf", metavar="PATH", help="a local transformers checkpoint folder")
    p.add_argument("--recipes", help="comma-separated, '+' combines: fuse,fuse+int8,int8,int4,sparse24 "
                                     "(default: per model)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--out", metavar="DIR", help="write report.md, report.json and the plots here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(_DTYPES), help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--repeats", type=int, help="timed forwards per latency (default 50 GPU, 5 CPU)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be at least 1, got {args.batch}")
    if args.hf is None and args.model is None:
        args.model = "mobilenet_v2"
    if args.model is not None and args.model not in MODELS:
        p.error(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)} or give --hf PATH")
    specs = None
    if args.recipes:
        from . import _parse
        specs = [s.strip() for s in args.recipes.split(",") if s.strip()]
        try:
            for s in specs:
                _parse(s)
        except ValueError as e:
            p.error(str(e))
        if not specs:
            p.error("--recipes is empty")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = _DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    try:
        loaded = load(args.model, args.hf, args.batch)
    except (ImportError, FileNotFoundError) as e:
        print(e, file=sys.stderr)  # one line naming the pip install (or the missing folder)
        return 2
    model = loaded.model.to(device=device, dtype=dtype)
    batches = [_to(b, device, dtype) for b in loaded.batches]
    if device.type == "cuda" and batches[0].__class__ is torch.Tensor and batches[0].dim() == 4:
        model = model.to(memory_format=torch.channels_last)  # NHWC: what the fused conv kernels prefer
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    print(f"kernelswap evaluate: {loaded.note}", file=sys.stderr)
    report = evaluate(model, batches, specs or loaded.recipes, metric=loaded.metric, logits=loaded.logits,
                      repeats=args.repeats, name=args.model or os.path.basename(args.hf.rstrip("/")), progress=not args.no_progress)
    report.data["model_note"] = loaded.note
    report.data["dtype"] = str(dtype).replace("torch.", "")
    print(report)
    if args.out:
        for path in report.write(args.out, plots=not args.no_plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0
