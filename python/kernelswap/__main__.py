"""Command line: `python -m kernelswap {info,demo,bench,evaluate}`.

  info   versions, GPU, extension status and which backend serves each op
  demo   swap a bundled real model with each recipe; accuracy, memory, latency
  bench  kernel and model microbenchmarks against the baselines
  evaluate  the deployment report of each recipe on one model: speed, memory, size, accuracy, per layer
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "info": ("kernelswap.info", "versions, GPU, extension status and which backend serves each op"),
    "demo": ("kernelswap.demo", "swap a bundled real model with each recipe and show what changed"),
    "bench": ("kernelswap.bench.cli", "kernel and model benchmarks against the baselines"),
    "evaluate": ("kernelswap.evaluate", "speed, memory, size, accuracy and per-layer table of each recipe"),
}


def _usage() -> str:
    lines = ["usage: python -m kernelswap {info,demo,bench,evaluate} [options]", ""]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`python -m kernelswap COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"python -m kernelswap: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
