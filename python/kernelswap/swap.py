"""swap(model, recipe, filter=...) -> SwapReport: convert a float model's layers in place.

    report = ks.swap(model, "int8")
    report = ks.swap(model, ks.Int4(group_size=64), filter=lambda name, mod: name != "lm_head")
    report = ks.swap(model, ["fuse", "int8"])
    report = ks.swap(model, ks.Int4(method="gptq"), calibration=batches)
    print(report)

Linear recipes take every nn.Linear the filter admits; "fuse" takes conv -> bn [-> add]
[-> act] chains (kernelswap.fuse). A layer a recipe cannot take stays as it is and is
listed in the report with the reason; so is a layer an earlier swap made (there is no
unswap: a second swap leaves it). Rows are in model order. Each swapped layer is probed:
its output on a probe input (the layer's real input when example_inputs is given, else a
seeded Gaussian) against the float layer's, as SQNR in dB.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .fuse import Fused, fuse_model
from .journal import Journal
from .nn import ConvBNAct2d, KernelswapModule
from .ops.activations import apply_activation
from .recipes import RECIPES, Recipe, resolve

Filter = Callable[[str, nn.Module], bool]
_PROBE_TOKENS = 8  # rows of the Gaussian probe for a Linear: enough for a stable SQNR, cheap on CPU


@dataclass
class LayerSwap:
    name: str
    recipe: str
    before: str  # module type(s) replaced
    after: str | None  # None when skipped
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None = None
    reason: str | None = None  # why skipped (or a note on a partial fuse)

    @property
    def swapped(self) -> bool:
        return self.after is not None


class SwapReport:
    """What swap did, layer by layer. str() is a table; to_dict() is JSON-ready."""

    def __init__(self, recipes: list[Recipe], layers: list[LayerSwap]):
        self.recipes = [str(r) for r in recipes]
        self.layers = layers

    @property
    def swapped(self) -> list[LayerSwap]:
        return [x for x in self.layers if x.swapped]

    @property
    def skipped(self) -> list[LayerSwap]:
        return [x for x in self.layers if not x.swapped]

    @property
    def bytes_before(self) -> int:
        return sum(x.bytes_before for x in self.swapped)

    @property
    def bytes_after(self) -> int:
        return sum(x.bytes_after for x in self.swapped)

    def to_dict(self) -> dict[str, Any]:
        return {"recipes": self.recipes, "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "layers": [asdict(x) for x in self.layers]}

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return (f"SwapReport(recipes={self.recipes}, swapped={len(self.swapped)}, skipped={len(self.skipped)}, "
                f"bytes {self.bytes_before} -> {self.bytes_after})")

    def __str__(self) -> str:
        head = ("layer", "recipe", "before", "after", "bytes before", "bytes after", "SQNR dB")
        rows = []
        for x in self.layers:
            sq = "" if x.sqnr_db is None else ("inf" if x.sqnr_db == float("inf") else f"{x.sqnr_db:.1f}")
            after = x.after or f"(left: {x.reason})"
            if x.after and x.reason:
                after += f" (note: {x.reason})"
            rows.append((x.name, x.recipe, x.before, after, f"{x.bytes_before:,}",
                         f"{x.bytes_after:,}" if x.swapped else "", sq))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
        fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]  # noqa: E731
        summary = f"{len(self.swapped)} layers swapped, {len(self.skipped)} left"
        if not self.layers:
            summary = "nothing changed: the model has no layer these recipes apply to"
        elif not self.swapped:
            summary = f"nothing changed: {summary} (why: the after column)"
        lines = [f"kernelswap.swap {' + '.join(self.recipes)}: {summary}"]
        if rows:
            lines += [fmt(head), *map(fmt, rows)]
        if self.swapped:
            lines.append(f"weights of the swapped layers: {self.bytes_before:,} -> {self.bytes_after:,} bytes "
                         f"({self.bytes_after / max(self.bytes_before, 1):.2f}x)")
        return "\n".join(lines)


# ---------------------------------------------------------------- helpers
def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (a kernelswap format_version excluded)."""
    if isinstance(module, KernelswapModule):
        return sum(m.weight_bytes() if isinstance(m, KernelswapModule) else tensor_bytes(m)
                   for m in module.modules())
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    noise = (ref - out).norm().item()
    if noise == 0:
        return float("inf")
    return 20.0 * torch.log10(torch.tensor(ref.norm().item() / noise)).item()


_RECIPE_FORMS = ("a recipe name (\"int8\", \"int4\", ...), a config object such as ks.Int4(group_size=64), "
                 "or a list of them")


def _what(x) -> str:
    """How an error names a wrong argument: None, int 8, a torch.Tensor, a dict."""
    t = type(x)
    if x is None or isinstance(x, (int, float)):
        return repr(x) if x is None else f"{t.__name__} {x!r}"
    return f"a {t.__qualname__}" if t.__module__ == "builtins" else f"a {t.__module__}.{t.__qualname__}"


def _recipe_error(spec) -> str | None:
    """Why `spec` is not one recipe (a name or a config object); None when it is."""
    if isinstance(spec, (str, Recipe)):
        return None
    if isinstance(spec, type) and issubclass(spec, Recipe):
        cls = ("ks." if spec.__module__ == "kernelswap.recipes" else "") + spec.__name__
        return f"got the class {cls}, not a config object: pass {cls}() (with its fields as needed) or {spec.name!r}"
    return f"got {_what(spec)}"


def check_args(model, recipe) -> list:
    """swap's `model` and `recipe` checked; returns the recipes as a list. TypeError naming the
    argument (and what it accepts) when either has the wrong type."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"kernelswap.swap: model must be an nn.Module (a model or layer, swapped in place), "
                        f"got {_what(model)}")
    if isinstance(recipe, (str, Recipe)):
        return [recipe]
    specs, why = [], _recipe_error(recipe)
    if isinstance(recipe, Iterable) and not isinstance(recipe, (dict, bytes, type)):
        specs = list(recipe)
        why = next((f"item {i}: {w}" for i, w in enumerate(map(_recipe_error, specs)) if w is not None), None)
    if why is not None:
        raise TypeError(f"kernelswap.swap: recipe must be {_RECIPE_FORMS}; {why}")
    return specs


def training_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the first submodule in training mode ('' for the model itself), or None."""
    return next(((name, m) for name, m in model.named_modules() if m.training), None)


def check_eval(model: nn.Module) -> None:
    """RuntimeError naming the first submodule in training mode (swap and load need eval mode)."""
    found = training_layer(model)
    if found is not None:
        where = f"its submodule {found[0]!r} is" if found[0] else "it is"
        raise RuntimeError(f"kernelswap.swap: the model must be in eval mode, but {where} in training mode; "
                           f"call model.eval() first (swapped layers are for inference: their weights are "
                           f"quantized/folded buffers without gradients)")


def _capture_inputs(model: nn.Module, example_inputs) -> dict[int, tuple]:
    """First positional inputs seen by every Linear / Conv2d during one forward (keyed by id)."""
    seen: dict[int, tuple] = {}

    def hook(mod, args):
        seen.setdefault(id(mod), tuple(a.detach() if torch.is_tensor(a) else a for a in args))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return seen


def _seeded_randn(shape, like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _probe_linear(old: nn.Linear, new: nn.Module, captured: tuple | None) -> float | None:
    x = captured[0] if captured else _seeded_randn((_PROBE_TOKENS, old.in_features), old.weight)
    with torch.no_grad():
        return sqnr(old(x), new(x))


def _probe_fused(f: Fused, captured: tuple | None) -> float | None:
    conv = f.conv
    if captured:
        x = captured[0]
    else:
        size = max(8, max(d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)))
        x = _seeded_randn((2, conv.in_channels, size, size), conv.weight)
    with torch.no_grad():
        y = f.bn(conv(x))
        r = _seeded_randn(y.shape, y) if f.residual else None
        ref = apply_activation(y if r is None else y + r, f.activation)
        return sqnr(ref, f.module(x, r))


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear, list[str]]]:
    """(first name, module, every name it is reachable by), Linear layers in model order."""
    found: dict[int, tuple[str, nn.Linear, list[str]]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Linear):
            found.setdefault(id(m), (name, m, []))[2].append(name)
    return list(found.values())


def _model_order(model: nn.Module) -> dict[str, int]:
    """Qualified name -> position in model order (the report's row order)."""
    return {name: i for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}


def _swapped_by(m: KernelswapModule) -> tuple[str, str]:
    """(recipe name, kind) of the recipe that made a kernelswap module."""
    try:
        name = m.recipe_config()["recipe"]
    except (NotImplementedError, KeyError, TypeError):
        name = "?"
    cls = RECIPES.get(name)
    return name, cls.kind if cls is not None else ("conv" if isinstance(m, ConvBNAct2d) else "linear")


def _already_swapped(model: nn.Module, recipe: Recipe) -> list[LayerSwap]:
    """Layers an earlier swap made that this recipe's kind would otherwise have taken: left, saying why."""
    out, seen = [], set()
    for name, m in model.named_modules(remove_duplicate=False):
        if not isinstance(m, KernelswapModule) or id(m) in seen:
            continue
        seen.add(id(m))
        made_by, kind = _swapped_by(m)
        if kind == recipe.kind:
            out.append(LayerSwap(name, recipe.name, type(m).__name__, None, tensor_bytes(m), 0, None,
                                 f"already {type(m).__name__} ({made_by}); swap the float model instead "
                                 f"(kernelswap has no unswap)"))
    return out


def _linear_reason(model: nn.Module, name: str, linear: nn.Linear) -> str | None:
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if isinstance(parent, nn.MultiheadAttention):
        return "used by nn.MultiheadAttention through its .weight, not by calling it"
    if type(linear) is not nn.Linear and type(linear).forward is not nn.Linear.forward:
        return f"{type(linear).__name__} subclasses nn.Linear with its own forward"
    dtensor = sys.modules.get("torch.distributed.tensor")  # no DTensor exists before that import
    if dtensor is not None and isinstance(linear.weight, dtensor.DTensor):
        return ("its weight is a DTensor (already sharded, e.g. by torch's parallelize_module); swap the full "
                "model first, then shard it with ks.parallel.ColwiseParallel / RowwiseParallel")
    return None


# ---------------------------------------------------------------- swap
def _calibrated(model: nn.Module, recipe: Recipe, filter: Filter | None, calibration) -> dict:
    """{layer name: calibrated state} for the layers the recipe will be asked to take."""
    if calibration is None or not recipe.needs_calibration:
        return {}
    layers = [(n, m) for n, m, _ in _linears(model)
              if _linear_reason(model, n, m) is None and (filter is None or filter(n, m))]
    return recipe.calibrate(model, layers, calibration) if layers else {}


def swap_journaled(model: nn.Module, recipes: list[Recipe], filter: Filter | None, journal: Journal,
                   probe: bool = True, example_inputs=None, calibration=None) -> SwapReport:
    """swap's work, every replacement recorded in `journal` (kernelswap.load undoes on failure).

    A calibrated recipe without calibration data packs by RTN/magnitude (load overwrites the tensors)."""
    captured = _capture_inputs(model, example_inputs) if probe and example_inputs is not None else {}
    order = _model_order(model)  # names of the float layers; a swap keeps them
    layers: list[LayerSwap] = []
    for recipe in recipes:
        layers += _already_swapped(model, recipe)
        if recipe.kind == "conv":
            for f in fuse_model(model, filter, journal):
                before = "Conv2d+BatchNorm2d" + ("+add" if f.residual else "") + \
                         ("" if f.activation == "identity" else f"+{f.activation}")
                ok = f.module is not None
                layers.append(LayerSwap(
                    f.name, recipe.name, before, type(f.module).__name__ if ok else None,
                    tensor_bytes(f.conv) + tensor_bytes(f.bn), tensor_bytes(f.module) if ok else 0,
                    _probe_fused(f, captured.get(id(f.conv))) if ok and probe else None, f.reason))
            continue
        states = _calibrated(model, recipe, filter, calibration)
        for name, linear, names in _linears(model):
            reason = _linear_reason(model, name, linear)
            if reason is None and filter is not None and not filter(name, linear):
                reason = "excluded by filter"
            new = None
            if reason is None:
                try:
                    new = recipe.convert(linear, name, states[name]) if name in states else \
                        recipe.convert(linear, name)
                except (TypeError, ValueError) as e:
                    reason = str(e)
            entry = LayerSwap(name, recipe.name, type(linear).__name__, None, tensor_bytes(linear), 0, None, reason)
            if new is not None:
                for n in names:  # a module reachable by several names is swapped at all of them
                    journal.replace(model, n, new)
                entry.after, entry.bytes_after = type(new).__name__, tensor_bytes(new)
                entry.sqnr_db = _probe_linear(linear, new, captured.get(id(linear))) if probe else None
            layers.append(entry)
    rank = {r.name: i for i, r in enumerate(recipes)}  # per recipe, in model order (fuse lists rewrites first)
    layers.sort(key=lambda x: (rank[x.recipe], order.get(x.name, len(order))))
    return SwapReport(recipes, layers)


def swap(model: nn.Module, recipe: str | Recipe | Iterable[str | Recipe], filter: Filter | None = None, *,
         probe: bool = True, example_inputs=None, calibration=None) -> SwapReport:
    """Swap `model`'s layers in place for kernelswap modules; returns a SwapReport.

    recipe          a name ("int8", "int8-weight", "int4", "sparse24", "sparse24-int8", "fuse"), a config
                    object (ks.Int4(group_size=64)), or a list of them (["fuse", "int8"]).
    filter          filter(name, module) -> bool: only layers it admits are swapped ("fuse" asks about
                    the conv of each chain).
    probe           measure each swapped layer's SQNR against the float layer (one small forward each).
    example_inputs  a model input (or tuple of inputs): probe every layer with its real input.
    calibration     an iterable of model inputs (tensors, tuples of positional arguments, dicts of keyword
                    arguments) for the calibrated methods (ks.Int4(method="gptq"), ks.Sparse24(method="wanda"),
                    ...; kernelswap.compress); the other recipes ignore it.
    The model must be in eval mode.
    """
    recipes = resolve(check_args(model, recipe))
    check_eval(model)
    for r in recipes:
        if r.needs_calibration and calibration is None:
            raise ValueError(f"kernelswap.swap: recipe {r} needs calibration data: pass calibration=[batch, ...] "
                             f"(model inputs: tensors, tuples of positional arguments or dicts of keyword "
                             f"arguments, e.g. tokenized text), or use its default method")
    return swap_journaled(model, recipes, filter, Journal(), probe, example_inputs, calibration)


__all__ = ["LayerSwap", "SwapReport", "check_args", "check_eval", "swap", "swap_journaled", "tensor_bytes"]
