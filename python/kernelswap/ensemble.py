"""ks.ensemble(models, combine): several models as one nn.Module whose output combines theirs.

    ens = ks.ensemble([m1, m2, m3, m4], combine="softmax-mean")   # batched=None | True | False, fold=True
    probs = ens(x)

combine    "mean"          mean of the members' outputs
           "softmax-mean"  mean of softmax(output, dim=-1): averaged class probabilities
           "max"           elementwise max of the outputs
           "vote"          majority vote of argmax(output, dim=-1): int64 class indices; a tie
                           goes to the lowest class index

What runs batched:
- On a GPU (or with batched=True), members of one architecture without kernelswap layers
  (same module types, attributes, parameter and buffer names, shapes and dtypes) run as ONE
  computation: their parameters and buffers are stacked (M, ...) and the shared forward
  runs under torch.func.vmap through functional_call, so each layer is one batched kernel
  for all members (a Linear becomes one batched matmul, a Conv2d one grouped convolution).
  The members' own parameters become views of the stacked tensors: the weights are held once
  (the channel fold adds channels_last copies of the Conv2d weights on a GPU).
  Where every layer holding parameters is a Linear, Conv1d/2d/3d, BatchNorm (eval), GroupNorm,
  LayerNorm or Embedding, the group is also folded (_ensemble_fold.py): the input repeated once
  per member, one plain forward, each of those layers one batched call (baddbmm, grouped
  convolution, per-member affine), which spares vmap's per-op host time. A convolutional model
  (no LayerNorm or Embedding) is tried folded into the channel dim first (each member's
  channels side by side, channels_last on a GPU, no transposes between layers), then into the
  batch dim. A fold serves an input signature (shapes, dtypes, other arguments) once its
  output matched vmap's for it; the first call of each signature runs vmap and checks the
  folds, outside CUDA-graph capture (a signature first seen inside a capture stays vmapped).
  ens.fold_reasons says why a group has no fold, ens.served_by(x) what serves x's signature;
  fold=False keeps every stacked group under vmap.
- Members holding kernelswap layers (swapped) run one after another in Python: the
  kernelswap ops have no vmap batching rule yet (their dispatcher reads each argument's
  layout, which a batched tensor does not have), so each swapped member is its own call.
- Each group (the batched one, each swapped or differently built member) runs on its own
  CUDA stream, so their kernels can overlap; on a CPU the groups run one after another.
- On a CPU the members run plainly, one after another, unless batched=True: there the
  stacked forward was slower (torch 2.14, one thread: four ResNet-18s at batch 1, 16x16,
  took 143 ms vmapped against 37 ms in a loop; MKL-DNN's grouped convolution, which vmap
  turns a batched Conv2d into, took 95% of it). batched=False never stacks.

Every member must give a float tensor of one shape for the same input; a member with
another shape is refused with an error naming both. The members must be in eval mode
(an ensemble is for inference).

Saving: the state_dict is the members' (members.0.*, members.1.*, ...). A swapped ensemble
saves with ks.save(ens, path); load it the usual way, into a fresh ensemble of float
models built the same way: ks.load(ks.ensemble([build() for _ in range(4)], "mean"), path).
(ks.save refuses a model without kernelswap layers; save a float ensemble with torch.save
or safetensors like any float model.) Swapping an ensemble's members in place
(ks.swap(ens, "int8")) is noticed: the groups are rebuilt at the next forward.
"""
from __future__ import annotations

import copy
import weakref
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.utils import _pytree as pytree

from ._ensemble_fold import aliases, fold
from .nn import KernelswapModule

COMBINES = ("mean", "softmax-mean", "max", "vote")

# Submodule of any ensemble's member -> that ensemble, so that a module swapped into a member
# (ks.swap sets attributes) marks the ensemble's stacked weights stale. The global registration
# hooks are installed at the first ks.ensemble call, not at import.
_OWNERS: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()
_HOOKED = False


def _on_register(module, name, value):
    ref = _OWNERS.get(module)
    ens = ref() if ref is not None else None
    if ens is not None:
        ens._stale = True
    return None


def _install_hooks() -> None:
    global _HOOKED
    if not _HOOKED:
        from torch.nn.modules import module as M
        M.register_module_module_registration_hook(_on_register)
        M.register_module_parameter_registration_hook(_on_register)
        M.register_module_buffer_registration_hook(_on_register)
        _HOOKED = True


_SCALARS = (bool, int, float, str, tuple, type(None))


def _plain(v) -> bool:
    """A scalar-like attribute that two builds of one architecture must share (hashable, comparable)."""
    if not isinstance(v, _SCALARS):
        return False
    try:
        hash(v)
    except TypeError:  # a tuple holding a list
        return False
    return True


def _fingerprint(model: nn.Module) -> tuple:
    """Equal for two models only if one forward computes both: module types and their plain
    attributes (stride, eps, heads...), and every parameter's and buffer's name, shape, dtype, device."""
    mods = tuple((n, type(m).__module__, type(m).__qualname__,
                  tuple(sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and _plain(v))))
                 for n, m in model.named_modules(remove_duplicate=False))
    tensors = tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in _state(model).items())
    return mods, tensors


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """id(tensor) -> every (module, attribute, is_parameter) that holds it (tied weights: several)."""
    out: dict[int, list] = {}
    for m in model.modules():
        for k, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, k, True))
        for k, b in m._buffers.items():
            if b is not None:
                out.setdefault(id(b), []).append((m, k, False))
    return out


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of model with meta-device parameters and buffers, tied ones still tied
    (model.to("meta") makes a new tensor per module, which unties them: functional_call would
    then leave the second path's meta tensor unreplaced)."""
    memo: dict[int, object] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


class _Batched:
    """Members of one float architecture: stacked state, a meta-device copy to call functionally,
    and, where every parameter-holding layer has a rule, the same members folded into the channel
    or batch dim (_ensemble_fold.py), served for each input signature once it matched vmap's output."""

    def __init__(self, members: list[nn.Module], index: list[int], fold_members: bool = True):
        self.index = index
        self.template = _meta_copy(members[0])
        names = aliases(members[0])
        states = [_state(m) for m in members]
        with torch.no_grad():
            self.state = {k: torch.stack([s[k].detach() for s in states]) for k in states[0]}
        for i, m in enumerate(members):  # the members now hold views of the stacked tensors
            owners = _owners(m)
            for k, t in states[i].items():
                view = self.state[k][i]
                for mod, attr, is_param in owners[id(t)]:
                    if is_param:
                        mod._parameters[attr].data = view
                    else:
                        mod._buffers[attr] = view
        self._call = vmap(self._one, in_dims=(0, None, None))
        now = [_state(m) for m in members]  # the members' own tensors, now views of the stack (or holding it)
        own = {k: [s[k] for s in now] for k in now[0]}
        # the folds to try, channel fold (convolutional models) first; fold_reason: why there is none
        self.folds, reasons = [], []
        for dim in (1, 0) if fold_members else ():
            f, why = fold(self.template, self.state, names, len(members), dim, own)
            if f is not None:
                self.folds.append(f)
            reasons.append(f"{('batch', 'channel')[dim]} fold: {why}")
        self.fold_reason = "" if self.folds else ("; ".join(reversed(reasons)) if fold_members else "fold=False")
        self.folded_ok: dict[tuple, int] = {}  # input signature -> the fold whose output matched vmap's (-1: none)

    def _one(self, state, args, kwargs):
        return functional_call(self.template, state, args, kwargs, tie_weights=True, strict=False)

    def _vmapped(self, args, kwargs):
        return self._call(self.state, args, kwargs)

    def __call__(self, args, kwargs):
        if not self.folds:
            return self._vmapped(args, kwargs)
        sig = _signature(args, kwargs)
        which = self.folded_ok.get(sig)
        if which is None:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                return self._vmapped(args, kwargs)  # the check syncs: shapes first seen in a capture stay vmapped
            ref = self._vmapped(args, kwargs)
            self.folded_ok[sig] = next((i for i, f in enumerate(self.folds) if _folds_right(f, args, kwargs, ref)), -1)
            return ref
        return self.folds[which](args, kwargs) if which >= 0 else self._vmapped(args, kwargs)

    def served_by(self, args, kwargs) -> str:
        """"channel fold", "batch fold" or "vmap": what serves this input signature (after a first call)."""
        which = self.folded_ok.get(_signature(args, kwargs), -1)
        return "vmap" if which < 0 else f"{('batch', 'channel')[self.folds[which].dim]} fold"


def _folds_right(f, args, kwargs, ref) -> bool:
    try:
        return _agree(f(args, kwargs), ref)
    except Exception:  # a layer the rules mishandle (members not where the fold put them): not this fold
        return False


def _signature(args, kwargs) -> tuple:
    """What decides whether the folded forward is right: every tensor's shape, dtype and device,
    every other argument's value (or type, where it cannot be hashed)."""
    def key(v):
        if isinstance(v, torch.Tensor):
            return ("T", tuple(v.shape), v.dtype, v.device)
        return v if _plain(v) else ("?", type(v).__qualname__)
    return tuple(map(key, pytree.tree_leaves((args, kwargs))))


def _agree(got, ref) -> bool:
    """The folded output is vmap's up to rounding: a folding mistake (rows of members mixed) is O(1)."""
    if not isinstance(got, torch.Tensor) or not isinstance(ref, torch.Tensor) or got.shape != ref.shape:
        return False
    if not ref.is_floating_point():
        return bool(torch.equal(got, ref))
    tol = 1e-2 if ref.dtype == torch.float32 else 5e-2  # TF32 / 16-bit kernels of two shapes
    scale = ref.abs().amax().float().clamp_min(1.0)
    return bool(((got.float() - ref.float()).abs().amax() <= tol * scale).item())


def _after_load(module: "Ensemble", _incompatible_keys) -> None:
    module._build()  # ks.load swapped layers into the members and filled them: regroup, restack


class Ensemble(nn.Module):
    def __init__(self, models: Iterable[nn.Module], combine: str = "mean", batched: bool | None = None,
                 fold: bool = True):
        super().__init__()
        models = list(models) if not isinstance(models, nn.Module) else [models]
        if not models:
            raise ValueError("ks.ensemble: no models given")
        if combine not in COMBINES:
            raise ValueError(f"ks.ensemble: combine must be one of {', '.join(map(repr, COMBINES))}, got {combine!r}")
        seen: dict[int, int] = {}
        for i, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"ks.ensemble: member {i} is a {type(m).__name__}, not an nn.Module")
            if id(m) in seen:
                raise ValueError(f"ks.ensemble: member {i} is the same module object as member {seen[id(m)]}; "
                                 f"pass a copy (copy.deepcopy) if you mean two members")
            seen[id(m)] = i
            training = [n or "<root>" for n, s in m.named_modules() if s.training]
            if training:
                raise ValueError(f"ks.ensemble: member {i} is in training mode (at {training[0]!r}); call .eval() "
                                 f"on it first (an ensemble is for inference)")
        if batched not in (None, True, False):
            raise TypeError(f"ks.ensemble: batched must be None (auto), True or False, got {batched!r}")
        self.members = nn.ModuleList(models)
        self.combine = combine
        if fold not in (True, False):
            raise TypeError(f"ks.ensemble: fold must be True or False, got {fold!r}")
        self.batched, self.fold = batched, fold
        self.eval()
        _install_hooks()
        self.register_load_state_dict_post_hook(_after_load)
        self._build()

    # ------------------------------------------------------------ grouping
    def _build(self) -> None:
        """Group the members (module docstring), stack each float group, make the streams."""
        members = list(self.members)
        devices = {t.device for m in members for t in _state(m).values()}
        if len(devices) > 1:
            raise ValueError(f"ks.ensemble: the members are on several devices ({sorted(map(str, devices))}); "
                             f"move them to one (ens.to(device))")
        device = devices.pop() if devices else torch.device("cpu")
        stack = device.type == "cuda" if self.batched is None else self.batched
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(members):
            swapped = any(isinstance(s, KernelswapModule) for s in m.modules())
            groups.setdefault(("single", i) if swapped or not stack else _fingerprint(m), []).append(i)
        self._groups = [_Batched([members[i] for i in idx], idx, self.fold) if len(idx) > 1 else idx[0]
                        for idx in sorted(groups.values())]
        self._streams = ([torch.cuda.Stream(device) for _ in self._groups]
                         if device.type == "cuda" and len(self._groups) > 1 else None)
        for m in self.members.modules():
            _OWNERS[m] = weakref.ref(self)
        self._stale = False

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # converts the members' views one by one: stack them again
        self._build()
        return self

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_groups", "_streams"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._build()

    @property
    def fold_reasons(self) -> list[str]:
        """For each batched group: "" where it has a fold (channel or batch) to try, else why not."""
        return [g.fold_reason for g in self._groups if isinstance(g, _Batched)]

    def served_by(self, *args, **kwargs) -> list[str]:
        """For each batched group, what serves these arguments' signature once a forward has seen it:
        "channel fold", "batch fold" or "vmap"."""
        return [g.served_by(args, kwargs) for g in self._groups if isinstance(g, _Batched)]

    @property
    def batched_groups(self) -> list[list[int]]:
        """Member indices of each group that runs as one batched computation."""
        return [g.index for g in self._groups if isinstance(g, _Batched)]

    # ------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        if self._stale:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("ks.ensemble: the members changed (a layer was swapped or replaced) and the "
                                   "stacked weights must be rebuilt, which cannot happen under CUDA-graph capture; "
                                   "run one forward before capturing")
            self._build()
        if len(self._groups) == 1 and isinstance(self._groups[0], _Batched):  # all of one build: already stacked
            return self._reduce(self._check_tensor(0, self._groups[0](args, kwargs)))
        outs: list = [None] * len(self.members)
        if self._streams is None:
            for g in self._groups:
                self._run(g, args, kwargs, outs)
        else:
            main = torch.cuda.current_stream()
            for g, s in zip(self._groups, self._streams):
                s.wait_stream(main)
                with torch.cuda.stream(s):
                    self._run(g, args, kwargs, outs)
            for s in self._streams:
                main.wait_stream(s)
            if not torch.cuda.is_current_stream_capturing():  # under capture the graph's pool owns them
                for o in outs:  # made on a side stream, read on this one: keep the allocator from reusing them early
                    o.record_stream(main)
        return self._combine(outs)

    def _run(self, group, args, kwargs, outs: list) -> None:
        if isinstance(group, _Batched):
            y = group(args, kwargs)
            self._check_tensor(group.index[0], y)
            for j, i in enumerate(group.index):
                outs[i] = y[j]
        else:
            outs[group] = self._check_tensor(group, self.members[group](*args, **kwargs))

    def _check_tensor(self, i: int, y):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            what = f"a {y.dtype} tensor" if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"
            raise TypeError(f"ks.ensemble: member {i} returned {what}; members must return one float tensor "
                            f"(wrap a model returning a dict or tuple so that it returns its logits)")
        return y

    def _combine(self, outs: list) -> torch.Tensor:
        first = outs[0]
        for i, o in enumerate(outs[1:], 1):
            if o.shape != first.shape:
                raise ValueError(f"ks.ensemble: member 0 gives an output of shape {tuple(first.shape)} but member "
                                 f"{i} gives {tuple(o.shape)}; an ensemble combines outputs of one shape")
        return self._reduce(torch.stack(outs))

    def _reduce(self, y: torch.Tensor) -> torch.Tensor:
        """(members, ...) outputs -> the combined output."""
        if self.combine == "mean":
            return y.mean(0)
        if self.combine == "softmax-mean":
            return y.softmax(dim=-1).mean(0)
        if self.combine == "max":
            return y.amax(0)
        votes = F.one_hot(y.argmax(dim=-1), y.shape[-1]).sum(0)  # (..., classes)
        return votes.argmax(dim=-1)  # first maximum: ties go to the lowest class index

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, batched groups={self.batched_groups}"


def ensemble(models: Iterable[nn.Module], combine: str = "mean", batched: bool | None = None,
             fold: bool = True) -> Ensemble:
    """One nn.Module combining `models`' outputs; see the module docstring for what runs batched.

    batched  None: stack same-architecture float members on a GPU, run every member plainly on a CPU;
             True / False: stack wherever possible / never.
    fold     True: a stacked group whose layers all have a folding rule runs folded (channel dim for
             convolutional models, else batch dim) where its output matched vmap's; False:
             stacked groups always run under vmap."""
    return Ensemble(models, combine, batched, fold)


__all__ = ["COMBINES", "Ensemble", "ensemble"]
