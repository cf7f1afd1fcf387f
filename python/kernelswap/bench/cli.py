"""`python -m kernelswap bench`: kernel and model benchmarks against the baselines.

Writes OUT/bench.csv (long format, one row per op x provider x shape x dtype, every
row tagged with GPU, versions, commit and date) and OUT/bench.md (targets met/missed,
losses, per-op tables, models), then prints a short table of the targets last. OUT is
--out, by default a new folder ./kernelswap-bench-DATE-TIME: the committed
benchmarks/results is written only when --out names it.
Plots are drawn from the CSV by a separate command: `python benchmarks/plot.py OUT/bench.csv`.

Order of work (kernelswap.bench.plan), so that a time budget cuts the least important
part: measured peaks; the P1-P8 cases; the CNN models; the N = 64 conv layers; the
decoder; the rest; last, the compile pass (torch.compile'd baselines and peers).
"""
from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import time

import torch

from . import providers as P
from .env import environment
from .plan import plan
from .report import markdown, merge, read_csv, short_table, write_csv
from .runner import Budget, Runner
from .shapes import SHAPE_SETS, describe, shape_set
from .timing import default_timer, l2_bytes, measure_peaks

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_GROUPS = ("cnn", "llm")


def _csv_list(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return items

    return parse


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    ops = P.ops()
    p = argparse.ArgumentParser(
        prog="python -m kernelswap bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\nShape sets (--list shows every shape):\n"
        + "\n".join(f"  {line}" for line in describe().splitlines() if not line.startswith("  ")),
        epilog="Example (as benchmarks/gpu_all.sh runs it): python -m kernelswap bench "
               "--shapes targets,llm,resnet50,mobilenetv2 --budget-s 300 --out OUT")
    p.add_argument("--shapes", type=_csv_list(SHAPE_SETS), default=None,
                   help=f"comma-separated shape sets from {', '.join(SHAPE_SETS)} "
                        "(default: targets; --quick: quick; on CPU: tiny)")
    p.add_argument("--ops", type=_csv_list(ops), default=ops,
                   help=f"comma-separated ops (default: all: {', '.join(ops)})")
    p.add_argument("--dtypes", type=_csv_list(tuple(DTYPES)), default=None,
                   help="comma-separated activation dtypes (default: bf16,fp16; --quick: bf16)")
    p.add_argument("--models", type=_csv_list(MODEL_GROUPS + ("none",)), default=None,
                   help="model benchmarks: cnn (MobileNetV2, ResNet-50), llm (decoder stack), none "
                        "(default on a GPU: cnn,llm; on CPU: none)")
    p.add_argument("--conv-batches", type=_int_list, default=None,
                   help="comma-separated batch sizes of the conv layers to time (default: every one of the "
                        "sets, N = 1 and 64)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the quick shape set, bf16, shorter timings, no providers that compile")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds; the rest are written as skipped")
    p.add_argument("--out", default=None,
                   help="folder for bench.csv and bench.md (default: a new folder ./kernelswap-bench-DATE-TIME; "
                        "the committed results are replaced only when named: --out benchmarks/results)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when present; cpu runs the reference paths (a smoke test of the harness)")
    p.add_argument("--list", action="store_true", help="print every shape of every set and exit")
    p.add_argument("--merge", nargs="+", metavar="CSV",
                   help="measure nothing: merge these bench.csv files (oldest first; a later run's row replaces "
                        "an earlier one's for the same case) into --out's bench.csv and bench.md")
    return p


def new_out_dir(now: float | None = None) -> str:
    """The default --out: a new folder made in the current directory,
    ./kernelswap-bench-YYYYMMDD-HHMMSS (with -2, -3, ... when taken), so that a run never
    writes over earlier results, benchmarks/results included."""
    base = "kernelswap-bench-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    for n in itertools.count(1):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.makedirs(path)  # made now, so a second run started meanwhile picks another name
            return path
        except FileExistsError:
            continue


def run(args, timer=None) -> list[dict]:
    """The whole benchmark; returns the rows (also written to args.out, a new folder when None)."""
    args.out = args.out or new_out_dir()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timer = timer or default_timer(device, args.quick)
    budget = Budget(args.budget_s)
    # On CPU (no GPU, or --device cpu) the default is a smoke run of the harness: tiny shapes, no models.
    cpu = device.type == "cpu"
    sets = args.shapes or (["tiny"] if cpu else ["quick"] if args.quick else ["targets"])
    models = args.models if args.models is not None else ([] if cpu else list(MODEL_GROUPS))
    dtypes = [DTYPES[d] for d in (args.dtypes or (["bf16"] if args.quick else ["bf16", "fp16"]))]
    peaks = measure_peaks(timer, device)
    runner = Runner(timer, device, environment(device), peaks, l2_bytes(device), budget, args.quick, sets[0])
    runner.peak_rows()

    # SIGTERM (e.g. `timeout`) still writes what was measured.
    try:
        old_handler = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: no handler, no partial write on SIGTERM
        old_handler = None
    try:
        for item in plan(sets, args.ops, dtypes, models, args.conv_batches):
            runner.shape_set = item.shape_set
            if item.kind == "kernel":
                runner.run_op(item.op, item.shape, item.dtype, P.providers(item.op))
            elif item.kind == "cnn":
                from .models import run_cnns
                run_cnns(runner)
            elif item.kind == "llm":
                from .models import run_decoder
                run_decoder(runner)
            _progress(runner, budget)
        runner.run_deferred()
    except Terminated:
        print("[bench] terminated: writing the rows measured so far", file=sys.stderr, flush=True)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        os.makedirs(args.out, exist_ok=True)
        write_csv(runner.rows, os.path.join(args.out, "bench.csv"))
        with open(os.path.join(args.out, "bench.md"), "w") as f:
            f.write(markdown(runner.rows))
    return runner.rows


def write_merged(paths: list[str], out: str) -> list[dict]:
    """`--merge`: several runs' CSVs as one bench.csv + bench.md in `out`."""
    rows = merge([read_csv(p) for p in paths])  # all read before `out` may overwrite one of them
    os.makedirs(out, exist_ok=True)
    write_csv(rows, os.path.join(out, "bench.csv"))
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(markdown(rows))
    return rows


class Terminated(BaseException):
    """SIGTERM: a BaseException, so the per-case `except Exception` does not record it as an error."""


def _terminate(signum, frame):
    raise Terminated()


_last_progress = [0.0]


def _progress(runner: Runner, budget: Budget) -> None:
    """A line every ~20 s, so a long run shows it is alive."""
    now = time.monotonic()
    if now - _last_progress[0] > 20:
        _last_progress[0] = now
        r = runner.rows[-1]
        print(f"[bench] {len(runner.rows)} rows; last {r['op']} {r['shape']} {r['dtype']}; "
              f"budget left {budget.left():.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        print(describe())
        return 0
    args.out = args.out or new_out_dir()
    rows = write_merged(args.merge, args.out) if args.merge else run(args)
    print(f"\nwrote {len(rows)} rows to {os.path.join(args.out, 'bench.csv')} and bench.md\n")
    print(short_table(rows))
    return 0
