"""ks.save(model, path) / ks.load(model, path): a swapped model as one safetensors file.

The file holds the swapped model's state_dict and, in its metadata, the format
version, the kernelswap version, per recipe the layers it took, and a sha256 of the
tensors (checked on load). Each swapped
module knows its recipe (recipe_config()), so save needs nothing but the model.

load(model, path) takes a freshly built float model of the same architecture (eval
mode), swaps the same layers with the same recipes, and loads the tensors. It reads
and checks the whole file first, then swaps, then checks every name, shape and dtype
kind against the file before copying anything: on any mismatch the swap is undone,
so an error leaves the model untouched.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn

from ._version import __version__
from .journal import Journal
from .nn import KernelswapModule
from .recipes import recipe_from_config
from .swap import check_eval, swap_journaled

FORMAT = "kernelswap.swapped-model"
FORMAT_VERSION = 1


def _layers_by_recipe(model: nn.Module) -> dict[str, list[str]]:
    """{recipe config as JSON: [qualified names of the modules it made]}."""
    out: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, KernelswapModule):
            out.setdefault(json.dumps(m.recipe_config(), sort_keys=True), []).append(name)
    return out


def _safetensors():
    try:
        import safetensors
        import safetensors.torch
    except ImportError as e:
        raise ImportError("kernelswap.save / kernelswap.load need the safetensors package: "
                          "pip install safetensors") from e
    return safetensors


def save(model: nn.Module, path: str | os.PathLike, *, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write a swapped model (tensors + recipes) to a safetensors file.

    state_dict: the tensors to write instead of model.state_dict() (kernelswap.parallel.save
    passes a sharded model's gathered full tensors)."""
    save_file = _safetensors().torch.save_file

    layers = _layers_by_recipe(model)
    if not layers:
        raise ValueError("kernelswap.save: the model holds no kernelswap layers; swap it first "
                         "(ks.swap(model, recipe)) or save the float model with torch/safetensors directly")
    # Clone: safetensors refuses tensors that share memory (tied weights), and wants them contiguous on CPU.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in (model.state_dict() if state_dict is None else state_dict).items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kernelswap_version": _version(),
                "recipes": json.dumps(layers), "sha256": _digest(tensors)}
    save_file(tensors, os.fspath(path), metadata=metadata)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: safetensors has no checksum of its own, and a
    flipped bit in a packed int4 weight would otherwise load silently."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _version() -> str:
    return __version__


def _read(path: str | os.PathLike) -> tuple[list[tuple[dict, list[str]]], dict[str, torch.Tensor]]:
    st = _safetensors()
    SafetensorError, load_file, safe_open = st.SafetensorError, st.torch.load_file, st.safe_open

    where = f"kernelswap.load: {os.fspath(path)!r}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where} does not exist")
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{where} is not a readable safetensors file ({e}); it may be truncated or corrupt") \
            from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where} was not written by kernelswap.save (no '{FORMAT}' metadata)")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{where} has format version {meta.get('format_version')!r}; this kernelswap "
                         f"({_version()}) reads version {FORMAT_VERSION}. Swap the float model again and re-save")
    if meta.get("sha256") != _digest(tensors):
        raise ValueError(f"{where}: its tensors do not match the checksum written by kernelswap.save; "
                         f"the file is corrupt (or was edited)")
    try:
        groups = [(json.loads(cfg), names) for cfg, names in json.loads(meta["recipes"]).items()]
        for cfg, names in groups:
            recipe_from_config(cfg)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"bad layer list {names!r}")
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: its recipe metadata is damaged ({e})") from None
    return groups, tensors


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Swap a float model the way the saved one was swapped and load its tensors; returns model.

    On any error the model is left as it was."""
    groups, tensors = _read(path)
    where = f"kernelswap.load: {os.fspath(path)!r}"
    if any(isinstance(m, KernelswapModule) for m in model.modules()):
        raise ValueError(f"{where}: the model already holds kernelswap layers; load expects the original float "
                         f"model (to fill an already swapped copy use model.load_state_dict instead)")
    check_eval(model)
    modules = dict(model.named_modules())
    for cfg, names in groups:
        want = nn.Conv2d if cfg["recipe"] == "fuse" else nn.Linear
        for n in names:
            if not isinstance(modules.get(n), want):
                got = "nothing" if n not in modules else type(modules[n]).__name__
                raise ValueError(f"{where}: the file swapped layer {n!r} with recipe {cfg['recipe']!r}, but this "
                                 f"model has {got} there (expected {want.__name__}); is it the same architecture?")
    journal = Journal()
    try:
        for cfg, names in sorted(groups, key=lambda g: g[0]["recipe"] != "fuse"):
            keep = set(names)
            report = swap_journaled(model, [recipe_from_config(cfg)], lambda name, _m, keep=keep: name in keep,
                                    journal, probe=False)
            missing = keep - {x.name for x in report.swapped}
            if missing:
                raise ValueError(f"{where}: recipe {cfg['recipe']!r} could not take {sorted(missing)[:5]} in this "
                                 f"model; is it the same architecture?")
        _check_state(where, model.state_dict(), tensors)
        model.load_state_dict(tensors, strict=True)
    except BaseException:
        journal.undo()
        raise
    return model


# Float dtypes that are codes of a weight format (FP8 weights), not values load may convert.
_CODES = (torch.float8_e4m3fn,)


def _check_state(where: str, have: dict[str, torch.Tensor], file: dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(set(have) - set(file)), sorted(set(file) - set(have))
    if missing or unexpected:
        raise ValueError(f"{where} does not match this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                         f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, t in file.items():
        h = have[k]
        if tuple(h.shape) != tuple(t.shape) or h.is_floating_point() != t.is_floating_point() or \
                ((not h.is_floating_point() or h.dtype in _CODES) and h.dtype != t.dtype):
            raise ValueError(f"{where}: tensor {k!r} is {tuple(t.shape)} {t.dtype} in the file but "
                             f"{tuple(h.shape)} {h.dtype} in the model; is it the same architecture and recipe?")


__all__ = ["FORMAT_VERSION", "load", "save"]
