"""Find Conv2d -> BatchNorm2d [-> add(residual)] [-> activation] chains and fuse each
into one ConvBNAct2d (the "fuse" recipe).

Chains are found on a torch.fx trace of the model (nn.Sequential included), so
torchvision ResNet (conv-bn-relu; bn + identity -> relu as a fused residual) and
MobileNetV2 (Conv2dNormActivation with ReLU6; the inverted-residual add without an
activation) are covered. How a chain is applied, keeping `swap` in place:
  - a plain chain whose modules are each called once: the conv is replaced by the
    fused module and the bn/activation modules by nn.Identity, where they are;
  - a chain with a residual add, a shared activation module (ResNet's block.relu) or
    a functional activation needs the forward changed: the module whose forward holds
    the chain (found from the trace's nn_module_stack, e.g. the BasicBlock) is
    rewritten as a torch.fx GraphModule and put back in its parent. The model's
    top-level module cannot be replaced in place; there only conv+bn is fused and
    the reason is reported.
Where the model cannot be traced, its children are tried one by one; an untraceable
nn.Sequential is scanned child by child. Everything else is left alone.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx
from torch import nn

from .journal import Journal
from .nn import ConvBNAct2d, KernelswapModule, activation_name

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}


@dataclass
class Fused:
    """One chain found: its modules before, the fused module after, or why it was left."""
    name: str  # the conv's qualified name, where the fused module now lives
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    activation: str
    residual: bool
    module: ConvBNAct2d | None = None
    reason: str | None = None  # skipped, or a partial fuse
    bn_name: str = ""
    act_name: str = ""


@dataclass
class _Chain:
    conv: fx.Node
    bn: fx.Node
    add: fx.Node | None = None
    residual: fx.Node | None = None
    act: fx.Node | None = None
    activation: str = "identity"
    partial: bool = False  # fuse conv+bn only (root-level residual/activation)

    @property
    def last(self) -> fx.Node:
        return self.act or self.add or self.bn

    def nodes(self) -> list[fx.Node]:
        return [n for n in (self.conv, self.bn, self.add, self.act) if n is not None]


class _Tracer(fx.Tracer):
    """torch.nn leaves as usual, plus kernelswap's own modules (already swapped)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, KernelswapModule) or super().is_leaf_module(m, qualname)


def _trace(module: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


def _plain_forward(module: nn.Module) -> str | None:
    """None when tracing `module` on its own gives the graph its parent runs; else why not.

    Traced alone, every argument is a Proxy: an optional argument (`residual=None`) would
    take its `is not None` branch whatever the parent passes."""
    if isinstance(module, fx.GraphModule):
        return None
    params = list(inspect.signature(module.forward).parameters.values())
    if any(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
           for p in params):
        return "its forward takes optional or variadic arguments"
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


# ---------------------------------------------------------------- finding chains in a graph
def _activation_of(node: fx.Node, modules: dict[str, nn.Module], source: fx.Node) -> str | None:
    if not node.args or node.args[0] is not source:
        return None
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            return None
        name = activation_name(modules[node.target])
        return None if name == "identity" else name
    if node.op == "call_function":
        if any(k != "inplace" for k in node.kwargs) or len(node.args) > 2:
            return None
        return activation_name(node.target)
    if node.op == "call_method" and len(node.args) == 1 and not node.kwargs:
        return _ACT_METHODS.get(node.target)
    return None


def _residual_of(node: fx.Node, source: fx.Node) -> fx.Node | None:
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
             (node.op == "call_method" and node.target in _ADD_METHODS)
    if not is_add or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    other = b if a is source else a if b is source else None
    return other if isinstance(other, fx.Node) and other is not source else None


def _find_chains(gm: fx.GraphModule) -> list[_Chain]:
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    # Modules whose tensors the forward also reads directly (e.g. self.conv.weight) must stay as they are.
    read = {n.target.rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
    chains, claimed = [], set()  # an add of two bn outputs belongs to the first chain only
    for conv in gm.graph.nodes:
        if conv.op != "call_module" or type(modules[conv.target]) is not nn.Conv2d or len(conv.users) != 1:
            continue
        bn = next(iter(conv.users))
        if (bn.op != "call_module" or type(modules[bn.target]) is not nn.BatchNorm2d or bn.args != (conv,)
                or bn.kwargs or calls[conv.target] != 1 or calls[bn.target] != 1
                or conv.target in read or bn.target in read):
            continue
        chain, tail = _Chain(conv, bn), bn
        if len(bn.users) == 1:
            user = next(iter(bn.users))
            residual = _residual_of(user, bn) if user not in claimed else None
            if residual is not None:
                claimed.add(user)
                chain.add, chain.residual, tail = user, residual, user
            act_node = next(iter(tail.users)) if len(tail.users) == 1 else None
            act = act_node is not None and _activation_of(act_node, modules, tail)
            if act:
                chain.act, chain.activation = act_node, act
        chains.append(chain)
    return chains


def _in_place_ok(chain: _Chain, calls: dict[str, int]) -> bool:
    """Swapping modules where they are gives the same dataflow (no forward rewrite needed)."""
    if chain.add is not None:
        return False
    return chain.act is None or (chain.act.op == "call_module" and calls[chain.act.target] == 1)


def _caller(node: fx.Node) -> str:
    """Qualified name of the module whose forward made this node ("" for the traced root)."""
    stack = [v[0] if isinstance(v, tuple) else str(v) for v in node.meta.get("nn_module_stack", {}).values()]
    if node.op == "call_module":
        stack = stack[:-1] if stack and stack[-1] == node.target else stack
    return stack[-1] if stack else ""


def _owner(chain: _Chain) -> str:
    parts = [_caller(n).split(".") if _caller(n) else [] for n in chain.nodes()]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


# ---------------------------------------------------------------- applying
def _record(chain: _Chain, gm: fx.GraphModule, prefix: str, filt, note: str | None = None) -> Fused:
    """The Fused entry for a chain, with its fused module unless the filter or a check says no."""
    mods = dict(gm.named_modules())
    name = _join(prefix, chain.conv.target)
    act = "identity" if chain.partial else chain.activation
    f = Fused(name, mods[chain.conv.target], mods[chain.bn.target], act,
              chain.add is not None and not chain.partial,
              bn_name=_join(prefix, chain.bn.target),
              act_name=_join(prefix, chain.act.target) if chain.act is not None and chain.act.op == "call_module"
              else "")
    if filt is not None and not filt(name, f.conv):
        f.reason = "excluded by filter"
        return f
    try:
        f.module = ConvBNAct2d.from_modules(f.conv, f.bn, act, name=name)
        f.reason = note
    except (TypeError, ValueError) as e:
        f.reason = str(e)
    return f


def _rewrite(gm: fx.GraphModule, chains: list[tuple[_Chain, Fused]]) -> None:
    g = gm.graph
    for chain, f in chains:
        gm.add_submodule(chain.conv.target, f.module)  # the fused module takes the conv's name
        args = (chain.conv.args[0],)  # read live: an earlier rewrite may have replaced these inputs
        if chain.add is not None:
            a, b = chain.add.args
            args += (b if a is chain.bn else a,)
        with g.inserting_after(chain.last):
            new = g.call_module(chain.conv.target, args)
        chain.last.replace_all_uses_with(new)
        for n in reversed(chain.nodes()):
            g.erase_node(n)
    g.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _fuse_traced(model: nn.Module, path: str, module: nn.Module, gm: fx.GraphModule, replaceable: bool, filt,
                 journal: Journal) -> list[Fused]:
    """`gm` is the trace of `module`, found at `path` in `model`."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    chains = _find_chains(gm)
    owners = set()
    for c in chains:
        if not _in_place_ok(c, calls):
            owner = _owner(c)
            if owner or replaceable:
                owners.add(owner)
    # Rewrite the outermost owners; they take every chain beneath them.
    owners = {o for o in owners if not any(p != o and (p == "" or o.startswith(p + ".")) for p in owners)}
    out: list[Fused] = []
    failed: dict[str, str] = {}  # owner -> why its forward could not be rewritten
    for owner in sorted(owners):
        sub_path = _join(path, owner)
        sub = module.get_submodule(owner) if owner else module  # the real module (gm holds bare containers)
        why = _plain_forward(sub)
        try:
            sub_gm = _trace(sub) if why is None else None
        except Exception as e:  # noqa: BLE001 - it traced inside its parent, so this is rare
            why = f"{type(e).__name__}: {e}"
        if why is not None:
            failed[owner] = why
            continue
        todo = []
        for c in _find_chains(sub_gm):
            f = _record(c, sub_gm, sub_path, filt)
            if f.module is None:
                out.append(f)
            else:
                todo.append((c, f))
        if todo:
            _rewrite(sub_gm, todo)
            journal.replace(model, sub_path, sub_gm)
        out.extend(f for _, f in todo)
    done = owners - set(failed)
    for c in chains:
        conv_path = c.conv.target
        if any(o == "" or conv_path.startswith(o + ".") for o in done):
            continue
        note = None
        if not _in_place_ok(c, calls):
            owner = _owner(c)
            owner = next((o for o in failed if o == "" or owner == o or owner.startswith(o + ".")), owner)
            note = (f"fused conv+bn only: the forward of {_join(path, owner)!r} holds the add / activation "
                    f"but cannot be rewritten on its own ({failed[owner]})" if owner in failed else
                    "fused conv+bn only: the residual add / activation after it is in the forward of the "
                    "top-level module, which swap cannot rewrite in place (wrap that part in a submodule)")
            c.partial = True
            c.act = c.add = c.residual = None
        f = _record(c, gm, path, filt, note)
        out.append(f)
        if f.module is None:
            continue
        journal.replace(model, f.name, f.module)
        journal.replace(model, f.bn_name, nn.Identity())
        if f.act_name and not c.partial:
            journal.replace(model, f.act_name, nn.Identity())
    return out


def _fuse_sequential(model: nn.Module, path: str, seq: nn.Sequential, filt, journal: Journal) -> list[Fused]:
    out, kids = [], list(seq.named_children())
    for i, (name, conv) in enumerate(kids[:-1]):
        bn_name, bn = kids[i + 1]
        if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
            continue
        act_name, act = kids[i + 2] if i + 2 < len(kids) else ("", None)
        act_kind = activation_name(act) if act is not None else None
        if act_kind in (None, "identity"):
            act_name, act_kind = "", "identity"
        f = Fused(_join(path, name), conv, bn, act_kind, False, bn_name=_join(path, bn_name),
                  act_name=_join(path, act_name) if act_name else "")
        if filt is not None and not filt(f.name, conv):
            f.reason = "excluded by filter"
        else:
            try:
                f.module = ConvBNAct2d.from_modules(conv, bn, act_kind, name=f.name)
            except (TypeError, ValueError) as e:
                f.reason = str(e)
        out.append(f)
        if f.module is not None:
            journal.replace(model, f.name, f.module)
            journal.replace(model, f.bn_name, nn.Identity())
            if f.act_name:
                journal.replace(model, f.act_name, nn.Identity())
    return out


def _fuse_subtree(model: nn.Module, path: str, module: nn.Module, filt, journal: Journal) -> list[Fused]:
    if isinstance(module, KernelswapModule) or not any(type(m) is nn.Conv2d for m in module.modules()):
        return []  # nothing to find; skips tracing (costly and mostly failing) e.g. a whole transformer
    try:
        gm = _trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure: try the parts
        gm = None
    if gm is not None:
        return _fuse_traced(model, path, module, gm, replaceable=bool(path), filt=filt, journal=journal)
    out = _fuse_sequential(model, path, module, filt, journal) if isinstance(module, nn.Sequential) else []
    for name, child in list(module.named_children()):
        if not isinstance(child, (ConvBNAct2d, nn.Identity)):
            out.extend(_fuse_subtree(model, _join(path, name), child, filt, journal))
    return out


def fuse_model(model: nn.Module, filt: Callable[[str, nn.Module], bool] | None = None,
               journal: Journal | None = None) -> list[Fused]:
    """Fuse every conv -> bn [-> add] [-> act] chain of `model` in place; one Fused per chain found."""
    return _fuse_subtree(model, "", model, filt, journal if journal is not None else Journal())


__all__ = ["Fused", "fuse_model"]
