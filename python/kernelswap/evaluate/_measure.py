"""What evaluate measures on one model: inputs as batches, outputs, latency, memory, bytes, accuracy."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

Batch = tuple[tuple, dict]  # (positional inputs, keyword inputs)
# Output fields taken as "the" output of a model returning a dict / ModelOutput, in this order.
_MAIN_KEYS = ("logits", "sentence_embedding", "last_hidden_state")


def as_batches(inputs) -> list[Batch]:
    """A tensor, a tuple (positional inputs), a dict (keyword inputs), or an iterable of those."""
    if inputs is None:
        raise ValueError("ks.evaluate: inputs is None; give an example input (a tensor, a tuple of positional "
                         "inputs, a dict of keyword inputs) or a list of such batches")
    if isinstance(inputs, (torch.Tensor, tuple, Mapping)):
        items = [inputs]
    else:
        try:
            items = list(inputs)
        except TypeError:
            raise TypeError(f"ks.evaluate: inputs is a {type(inputs).__name__}; give a tensor, a tuple, a dict "
                            f"or an iterable of them") from None
    if not items:
        raise ValueError("ks.evaluate: inputs is empty; give at least one batch")
    batches = []
    for i, b in enumerate(items):
        if isinstance(b, torch.Tensor):
            batch = ((b,), {})
        elif isinstance(b, tuple):
            batch = (b, {})
        elif isinstance(b, Mapping):
            batch = ((), dict(b))
        else:
            raise TypeError(f"ks.evaluate: batch {i} is a {type(b).__name__}; a batch is a tensor, a tuple of "
                            f"positional inputs or a dict of keyword inputs")
        tensors = batch_tensors(batch)
        if not tensors:
            raise ValueError(f"ks.evaluate: batch {i} holds no tensor")
        if tensors[0].dim() == 0 or tensors[0].shape[0] == 0:
            raise ValueError(f"ks.evaluate: batch {i}'s first input has shape {tuple(tensors[0].shape)}; it needs a "
                             f"leading batch dimension of at least 1")
        batches.append(batch)
    return batches


def batch_tensors(batch: Batch) -> list[torch.Tensor]:
    args, kwargs = batch
    return [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]


def batch_size(batch: Batch) -> int:
    return int(batch_tensors(batch)[0].shape[0])


def run(model: Callable, batch: Batch):
    with torch.inference_mode():
        return model(*batch[0], **batch[1])


def main_output(out) -> tuple[torch.Tensor, str]:
    """(the tensor accuracy is judged on, where it came from)."""
    if isinstance(out, torch.Tensor):
        return out, "output"
    if isinstance(out, Mapping):
        for k in _MAIN_KEYS:
            if isinstance(out.get(k), torch.Tensor):
                return out[k], k
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                return v, str(k)
    if isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            if isinstance(v, torch.Tensor):
                return v, f"output[{i}]"
    raise TypeError(f"ks.evaluate: the model returned a {type(out).__name__} holding no tensor; wrap it so that "
                    f"it returns a tensor (or a dict / tuple of tensors)")


# ---------------------------------------------------------------- time
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Milliseconds per call: CUDA events on the GPU (after a synchronize), perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(times_ms: list[float], items: int) -> dict:
    """median / p20 / p80 in ms, and items per second at the median."""
    med = float(np.median(times_ms))
    return {"median_ms": med, "p20_ms": float(np.percentile(times_ms, 20)),
            "p80_ms": float(np.percentile(times_ms, 80)), "repeats": len(times_ms),
            "throughput_per_s": items / (med / 1e3) if med > 0 else None}


# ---------------------------------------------------------------- memory and bytes
def device_bytes(model: nn.Module) -> int:
    """Bytes of the distinct storages behind the model's parameters and buffers."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        s = t.untyped_storage()
        key = (t.device, s.data_ptr())
        if key not in seen:
            seen.add(key)
            total += s.nbytes()
    return total


def peak_forward_memory(model: Callable, batch: Batch, device: torch.device) -> dict | None:
    """Peak allocated bytes during one forward, and how much of that the forward added (GPU only)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = run(model, batch)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return {"peak_bytes": int(peak), "forward_bytes": int(peak - before)}


def file_size(model: nn.Module, swapped: bool) -> tuple[int | None, str | None]:
    """(bytes of the file, or None and why): ks.save for a swapped model, a safetensors file of
    the state_dict for the float one; written to a temporary folder, then removed."""
    try:
        import safetensors.torch
    except ImportError:
        return None, "safetensors is not installed (pip install safetensors)"
    from ..serialization import save
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        if swapped:
            save(model, path)
        else:
            tensors, seen = {}, set()
            for k, v in model.state_dict().items():  # a tied weight is stored once, as save_pretrained does
                key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
                if key not in seen:
                    seen.add(key)
                    tensors[k] = v.detach().to("cpu", copy=True).contiguous()
            safetensors.torch.save_file(tensors, path)
        return os.path.getsize(path), None


def reload_difference(model: nn.Module, float_model: nn.Module, batch: Batch) -> float | None:
    """ks.save, then ks.load into a copy of the float model: max |difference| of the outputs."""
    import copy

    from ..serialization import load, save
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        save(model, path)
        loaded = load(copy.deepcopy(float_model), path)
    a, b = main_output(run(model, batch))[0], main_output(run(loaded, batch))[0]
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# ---------------------------------------------------------------- accuracy
def accuracy(outs: list, refs: list, logits: bool | None) -> dict:
    """Cosine (per sample), max error, SQNR and top-1 agreement of outputs against reference outputs."""
    cos, max_err, ref_max, noise, signal, agree, total, nonfinite = [], 0.0, 0.0, 0.0, 0.0, 0, 0, 0
    is_logits = logits
    for i, (o, r) in enumerate(zip(outs, refs)):
        (a, where), (b, _) = main_output(o), main_output(r)
        if a.shape != b.shape:
            raise ValueError(f"ks.evaluate: batch {i}: output {where} has shape {tuple(a.shape)}, the reference "
                             f"{tuple(b.shape)}")
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        nonfinite += int((~torch.isfinite(a)).sum())
        a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if is_logits is None:
            is_logits = where == "logits" or (where == "output" and a.dim() >= 2 and a.shape[-1] >= 2)
        fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        cos.append(torch.nn.functional.cosine_similarity(fa, fb, dim=1, eps=1e-30))
        max_err = max(max_err, float((a - b).abs().max()) if a.numel() else 0.0)
        ref_max = max(ref_max, float(b.abs().max()) if b.numel() else 0.0)
        noise += float(((a - b) ** 2).sum())
        signal += float((b ** 2).sum())
        if is_logits:
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a[..., 0].numel()
    c = torch.cat(cos)
    sqnr = float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise)) if signal > 0 else None
    return {"cosine_mean": float(c.mean()), "cosine_min": float(c.min()), "max_abs_error": max_err,
            "max_rel_error": max_err / ref_max if ref_max else None, "sqnr_db": sqnr,
            "top1_agreement": 100.0 * agree / total if is_logits and total else None,
            "nonfinite_outputs": nonfinite}


def user_metric(metric: Callable, outs: list, refs: list) -> dict | None:
    """metric(outputs, reference_outputs) per batch -> float or {name: float}; the mean over batches."""
    if metric is None:
        return None
    acc: dict[str, list[float]] = {}
    for o, r in zip(outs, refs):
        v = metric(o, r)
        items = v.items() if isinstance(v, Mapping) else [(getattr(metric, "__name__", "metric"), v)]
        for k, x in items:
            try:
                acc.setdefault(str(k), []).append(float(x))
            except (TypeError, ValueError):
                raise TypeError(f"ks.evaluate: metric returned {x!r} for {k!r}; it must return a number or a dict "
                                f"of numbers") from None
    return {k: float(np.mean(v)) for k, v in acc.items()}
