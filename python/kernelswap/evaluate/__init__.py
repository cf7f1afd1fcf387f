"""ks.evaluate + `python -m kernelswap evaluate`: the report to read before deploying a swap.

    report = ks.evaluate(model, x, recipes=["fuse", "fuse+int8"])
    print(report)                       # markdown tables
    report.write("out/")                # report.md, report.json, PNG plots drawn from the JSON

For the float model and for each recipe (a swapped deep copy), in the same run:
  latency     median / p20 / p80 of one forward on the first batch, eager, and on a GPU also
              replayed as a CUDA graph through ks.capture; throughput (items per second) at
              that batch
  memory      peak GPU memory of a forward; bytes of the weights on the device; size of
              the ks.save file (a plain safetensors file of the state_dict for the float
              model) and, for a swapped model, that ks.load gives back the same outputs
  accuracy    against the reference outputs, over every batch: cosine per sample (mean,
              min), max abs / relative error, SQNR; top-1 agreement for logits;
              metric(outputs, reference_outputs) -> number or {name: number}, averaged
              over the batches
  layers      each swapped layer: recipe, backend that served it, share of the forward's
              time; each layer left as it was, with the reason

inputs: a tensor (one batch, model(x)), a tuple (positional inputs), a dict (keyword
inputs), or a list/iterable of such batches. reference: None (the float model's own
outputs), a model or callable run on the same batches, or a list of outputs, one per
batch. On a CPU the kernelswap ops run their reference path: the timings are a smoke
run and say nothing about GPU speed; the report says so.
"""
from __future__ import annotations

import copy
import datetime
import time
from typing import Callable, Iterable

import torch
from torch import nn

from ..recipes import Recipe, resolve
from ..swap import check_eval, swap
from . import _measure as M
from ._layers import layer_table
from ._write import format_markdown, write_report

CPU_NOTE = ("CPU smoke run: measures nothing about GPU speed (every kernelswap op runs its reference path, "
            "plain torch)")


class EvalReport:
    """What ks.evaluate measured. `.data` is JSON-ready; str() is markdown; write(dir) saves it all."""

    def __init__(self, data: dict):
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    def to_dict(self) -> dict:
        return self.data

    def __str__(self) -> str:
        return format_markdown(self.data)

    def __repr__(self) -> str:
        return f"EvalReport(model={self.data['model']!r}, recipes={[r['recipe'] for r in self.data['results']]})"

    def write(self, out_dir, plots: bool = True) -> list[str]:
        """report.md, report.json and (matplotlib) PNG plots in out_dir; returns the paths."""
        return write_report(self.data, out_dir, plots=plots)


def _parse(spec) -> tuple[str, list[Recipe]]:
    """'fuse+int8', ks.Int4(...), ['fuse', 'int8'] -> (label, recipes); ValueError naming the bad one."""
    parts = spec.split("+") if isinstance(spec, str) else [spec] if isinstance(spec, Recipe) else list(spec)
    recipes = resolve([p.strip() if isinstance(p, str) else p for p in parts])
    return spec if isinstance(spec, str) else "+".join(str(r) for r in recipes), recipes


def _env(device: torch.device) -> dict:
    from .._version import __version__
    env = {"torch": torch.__version__, "kernelswap": __version__, "device": str(device),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - triton missing or broken: just not listed
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["note"] = "GPU: each op takes the fastest available backend; timed with CUDA events"
    else:
        env["cpu_threads"] = torch.get_num_threads()
        env["note"] = CPU_NOTE
    return env


def _capture_latency(model, batch, device, repeats, warmup) -> dict:
    """Latency of ks.capture's CUDA-graph replay (GPU only), or why there is none."""
    if device.type != "cuda":
        return {"skipped": "CUDA graphs need a GPU"}
    try:
        from ..capture import capture
        graph = capture(model, *batch[0], **batch[1])
        times = M.time_calls(lambda: graph(*batch[0], **batch[1]), device, repeats, warmup)
    except Exception as e:  # noqa: BLE001 - a model that cannot be captured is a finding, not a crash
        return {"skipped": f"ks.capture failed: {type(e).__name__}: {e}"}
    return M.summarize(times, M.batch_size(batch))


def _measure(model, batches, refs, device, opts, swapped, float_model=None) -> dict:
    first = batches[0]
    items = M.batch_size(first)
    outs = [M.run(model, b) for b in batches]
    eager = M.summarize(M.time_calls(lambda: M.run(model, first), device, opts["repeats"], opts["warmup"]), items)
    size, why = M.file_size(model, swapped)
    row = {"latency": {"eager": eager, "captured": _capture_latency(model, first, device, opts["repeats"],
                                                                    opts["warmup"])},
           "memory": M.peak_forward_memory(model, first, device), "weight_bytes": M.device_bytes(model),
           "file_bytes": size, "file_note": why,
           "accuracy": M.accuracy(outs, refs, opts["logits"]) if refs is not None else None,
           "metric": M.user_metric(opts["metric"], outs, refs) if refs is not None else None}
    if swapped and size is not None:
        row["reload_max_abs_diff"] = M.reload_difference(model, float_model, first)
    return row, outs


def _references(reference, model, batches) -> list | None:
    if reference is None:
        return None
    if isinstance(reference, (list, tuple)):
        if len(reference) != len(batches):
            raise ValueError(f"ks.evaluate: reference holds {len(reference)} outputs for {len(batches)} batches")
        return list(reference)
    if callable(reference):
        return [M.run(reference, b) for b in batches]
    raise TypeError(f"ks.evaluate: reference must be None, a model/callable or a list of outputs, "
                    f"got {type(reference).__name__}")


def evaluate(model: nn.Module, inputs, recipes: Iterable = ("int8",), metric: Callable | None = None,
             reference=None, *, logits: bool | None = None, repeats: int | None = None,
             warmup: int | None = None, layer_repeats: int = 3, name: str | None = None,
             progress: bool = True) -> EvalReport:
    """Swap a copy of `model` with each recipe and measure it against the float model (module docstring).

    recipes   each a name ("int8"), '+'-joined names ("fuse+int8"), a config object (ks.Int4(64)) or a
              list of them combined in one swap; the float model is always measured too.
    metric    metric(outputs, reference_outputs) -> float or {name: float}, per batch.
    logits    report top-1 agreement (argmax over the last dim); None: when the output is a tensor of
              2+ dims or an output's 'logits' field. Pass False for embeddings.
    repeats   timed forwards per latency (default 50 on a GPU, 5 on a CPU), after `warmup` (5 / 1).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"ks.evaluate: model must be an nn.Module, got {type(model).__name__}")
    specs = [recipes] if isinstance(recipes, (str, Recipe)) else list(recipes)
    if not specs:
        raise ValueError("ks.evaluate: no recipes given; e.g. recipes=['int8', 'fuse+int8']")
    parsed = [_parse(s) for s in specs]
    batches = M.as_batches(inputs)
    check_eval(model)
    device = M.batch_tensors(batches[0])[0].device
    gpu = device.type == "cuda"
    opts = {"repeats": repeats or (50 if gpu else 5), "warmup": warmup if warmup is not None else (5 if gpu else 1),
            "logits": logits, "metric": metric}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(parsed) + 1, desc="ks.evaluate", unit="model", disable=not progress)
    bar.set_postfix_str("float")
    refs = _references(reference, model, batches)
    base, float_outs = _measure(model, batches, refs, device, opts, swapped=False)
    refs = float_outs if refs is None else refs
    given_reference = reference is not None
    if not given_reference:
        base["accuracy"] = M.accuracy(float_outs, refs, logits)
        base["metric"] = M.user_metric(metric, float_outs, refs)
    bar.update()
    results = []
    for label, recipe_list in parsed:
        bar.set_postfix_str(label)
        swapped_model = copy.deepcopy(model)
        args, kwargs = batches[0]
        t0 = time.perf_counter()
        report = swap(swapped_model, recipe_list, example_inputs=None if kwargs else args)
        swap_s = time.perf_counter() - t0
        row, _ = _measure(swapped_model, batches, refs, device, opts, swapped=bool(report.swapped),
                          float_model=model)
        row.update({"recipe": label, "swap_s": swap_s, "layers_swapped": len(report.swapped),
                    "layers_left": len(report.skipped),
                    "per_layer": layer_table(swapped_model, report, batches[0], device, layer_repeats)})
        results.append(row)
        del swapped_model
        bar.update()
    bar.close()
    data = {"model": name or type(model).__name__, "batch": M.batch_size(batches[0]), "batches": len(batches),
            "env": _env(device), "repeats": opts["repeats"], "warmup": opts["warmup"],
            "reference": "the float model" if not given_reference else "the given reference",
            "float": base, "results": results}
    return EvalReport(data)


def main(argv: list[str] | None = None) -> int:
    from ._cli import main as cli_main
    return cli_main(argv)


__all__ = ["CPU_NOTE", "EvalReport", "evaluate", "main"]
