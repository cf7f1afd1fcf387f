"""Members of one architecture folded into one plain forward that computes all of them.

ks.ensemble's batched group stacks its members' parameters (M, ...). Under torch.func.vmap every
op of the shared forward pays vmap's dispatch, which at small batch costs more host time than it
saves (a vmapped ResNet-18 x4 at batch 1 took as long as four plain forwards on an H200). Folding
runs the forward once, unbatched, on inputs repeated M times along dim 0 (member-major: rows
m*B .. (m+1)*B - 1 belong to member m). Only the layers that hold parameters need to know about
the members, and each of them is one batched call:

  Linear      (M*B, ..., K) -> view (M, B*..., K) -> baddbmm with the stacked (M, K, N) weights
  Conv1d/2d   (M*B, C, ...) -> (B, M*C, ...) -> one grouped convolution (groups * M) -> back
  LayerNorm   normalise without affine, then one addcmul with the stacked weight and bias
  BatchNorm   (eval) one addcmul with scale / shift from the stacked running statistics
  Embedding   ids offset by m * vocabulary into the stacked (M*V, D) table

Every other op (activations, attention's matmuls and softmax, pooling, residual adds, reshapes
of the non-batch dims) treats the rows of a batch independently and runs unchanged. A model is
folded only when every module that holds parameters is one of the types above (no hooks, no
padding modes or max_norm the rules do not cover) and every buffer outside them is equal across
the members; otherwise the group keeps vmap. A layer that reads the batch off another dim than 0
(a sequence-first layout, a reduction over the batch) would be folded wrongly, so the ensemble
compares the folded output with vmap's on the first input of each shape and serves that shape
folded only if they agree (ensemble.py, _Batched).

Convolutional models fold into the channel dim instead (fold(..., dim=1)), tried first: inputs
repeated along dim 1, so member m's activations are channels m*C .. (m+1)*C - 1 of (B, M*C, ...)
all the way through, with no transposes between layers:

  Conv1d/2d/3d  one grouped convolution (groups * M) on the activations as they are
  BatchNorm     one batch_norm over M*C channels (eval), GroupNorm one group_norm of groups * M
  Linear        (..., M*K) -> (M, ..., K) -> baddbmm -> (..., M*N)   (a CNN's head, after flatten)

On a GPU the channel-folded 4-d activations and the Conv2d weights are channels_last (cuDNN's
NHWC kernels: four ResNet-18s at batch 16, bf16, on an H200 ran in 2.29 ms this way against
3.13 ms as NCHW; the weights' channels_last copies are kept, remade when a weight changes).
Ops that mix channels (LayerNorm over them, attention, a reshape of dim 1) would be folded
wrongly: the check against vmap then falls back to the batch fold.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree


_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _stamp(watch: list[torch.Tensor]) -> tuple | None:
    """The version counters of a layer's stacked tensors and of the members' own ones: a write to
    either changes it. (A member's parameter holds the stack's storage through .data, which keeps the
    parameter's own version counter: a write through it does not bump the stack's.) None when one
    of them is an inference tensor (made under torch.inference_mode), which keeps no version: the
    caller then recomputes on every call."""
    if any(t.is_inference() for t in watch):
        return None
    return tuple(t._version for t in watch)


def _per_member(t: torch.Tensor, x: torch.Tensor, m: int) -> torch.Tensor:
    """(M, C) -> a view broadcasting against x (M*B, C, ...) viewed as (M, B, C, ...)."""
    return t.reshape(m, 1, t.shape[1], *([1] * (x.dim() - 2)))


def _channel_affine(x: torch.Tensor, m: int, scale, shift) -> torch.Tensor:
    """x * scale + shift per member and channel (dim 1 of x); scale / shift (M, C) or None."""
    if scale is None and shift is None:
        return x
    xm = x.reshape(m, -1, *x.shape[1:])
    if scale is None:
        y = xm + _per_member(shift, x, m)
    elif shift is None:
        y = xm * _per_member(scale, x, m)
    else:
        y = torch.addcmul(_per_member(shift, x, m), xm, _per_member(scale, x, m))
    return y.reshape(x.shape)


class _FoldedLinear(nn.Module):
    def __init__(self, m: int, weight: torch.Tensor, bias: torch.Tensor | None, channel: bool):
        super().__init__()
        self.m, self.weight, self.bias, self.channel = m, weight, bias, channel  # (M, N, K), (M, N)

    def forward(self, x):
        m, k = self.m, self.weight.shape[-1]
        if self.channel:  # (..., M*K): member m's features are m*K .. (m+1)*K - 1
            if x.shape[-1] != m * k:
                raise ValueError(f"channel fold: a Linear of {k} features got {x.shape[-1]}, not {m} x {k}")
            xm = x.reshape(-1, m, k).transpose(0, 1)
        else:
            xm = x.reshape(m, -1, k)
        wt = self.weight.transpose(1, 2)
        y = torch.bmm(xm, wt) if self.bias is None else torch.baddbmm(self.bias[:, None, :], xm, wt)
        if self.channel:
            return y.transpose(0, 1).reshape(*x.shape[:-1], -1)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class _FoldedConv(nn.Module):
    """M members' convolutions as one grouped convolution over (B, M*C, ...)."""

    def __init__(self, m: int, conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, channel: bool,
                 watch: list[torch.Tensor]):
        super().__init__()
        self.m, self.op, self.channel, self.watch = m, _CONV[type(conv)], channel, watch
        self.weight = weight.reshape(-1, *weight.shape[2:])  # (M*K, C/g, k...): member m's groups m*g..
        self.bias = None if bias is None else bias.reshape(-1)
        self.kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups * m)
        self._nhwc = (None, None)  # (_stamp(watch) when made, the weight's channels_last copy)

    def _weight(self):
        w = self.weight
        if not (self.channel and w.is_cuda and w.dim() == 4):
            return w
        stamp = _stamp(self.watch)
        if stamp is None or self._nhwc[0] != stamp:
            self._nhwc = (stamp, w.contiguous(memory_format=torch.channels_last))
        return self._nhwc[1]

    def forward(self, x):
        if self.channel:  # (B, M*C, ...) in, (B, M*K, ...) out
            return self.op(x, self._weight(), self.bias, **self.kw)
        m, b = self.m, x.shape[0] // self.m
        if b == 1:  # (M, C, ...) is (1, M*C, ...) already: no transposes
            y = self.op(x.reshape(1, -1, *x.shape[2:]), self.weight, self.bias, **self.kw)
            return y.reshape(m, -1, *y.shape[2:])
        xg = x.reshape(m, b, *x.shape[1:]).transpose(0, 1).reshape(b, -1, *x.shape[2:])
        y = self.op(xg, self.weight, self.bias, **self.kw)  # (B, M*K, ...)
        return y.reshape(b, m, -1, *y.shape[2:]).transpose(0, 1).reshape(m * b, -1, *y.shape[2:])


class _FoldedBatchNorm(nn.Module):
    """Eval-mode BatchNorm: x * scale + shift, both from the stacked running statistics (batch
    fold), or one batch_norm over the M*C channels (channel fold)."""

    def __init__(self, m: int, bn: nn.Module, weight, bias, mean, var, channel: bool, watch: list[torch.Tensor]):
        super().__init__()
        self.m, self.eps, self.channel, self.watch = m, bn.eps, channel, watch
        self.stats = [weight, bias, mean, var]
        self._key, self._per_dim = None, {}

    def _affine(self, x):
        """(scale, shift) as views broadcasting against x; recomputed only when a statistic changed
        in place (load_state_dict, a write through a member)."""
        key = _stamp(self.watch)
        if key is None or key != self._key:
            w, b, mean, var = self.stats
            scale = torch.rsqrt(var.float() + self.eps)
            if w is not None:
                scale = scale * w.float()
            shift = -mean.float() * scale + (b.float() if b is not None else 0)
            self._affine_mc, self._key, self._per_dim = (scale.to(var.dtype), shift.to(var.dtype)), key, {}
        views = self._per_dim.get(x.dim())
        if views is None:
            views = self._per_dim[x.dim()] = tuple(_per_member(t, x, self.m) for t in self._affine_mc)
        return views

    def forward(self, x):
        if self.channel:
            w, b, mean, var = (None if t is None else t.reshape(-1) for t in self.stats)
            return F.batch_norm(x, mean, var, w, b, False, 0.0, self.eps)
        scale, shift = self._affine(x)
        return torch.addcmul(shift, x.reshape(self.m, -1, *x.shape[1:]), scale).reshape(x.shape)


class _FoldedGroupNorm(nn.Module):
    def __init__(self, m: int, gn: nn.GroupNorm, weight, bias, channel: bool):
        super().__init__()
        self.m, self.groups, self.eps, self.weight, self.bias = m, gn.num_groups, gn.eps, weight, bias
        self.channel = channel

    def forward(self, x):
        if self.channel:  # member m's g groups are groups m*g .. (m+1)*g - 1 of the M*C channels
            w, b = (None if t is None else t.reshape(-1) for t in (self.weight, self.bias))
            return F.group_norm(x, self.groups * self.m, w, b, self.eps)
        return _channel_affine(F.group_norm(x, self.groups, None, None, self.eps), self.m, self.weight, self.bias)


class _FoldedLayerNorm(nn.Module):
    def __init__(self, m: int, ln: nn.LayerNorm, weight, bias):
        super().__init__()
        self.m, self.shape, self.eps = m, tuple(ln.normalized_shape), ln.eps
        self.weight, self.bias = weight, bias  # (M, *normalized_shape) or None

    def forward(self, x):
        y = F.layer_norm(x, self.shape, None, None, self.eps)
        if self.weight is None and self.bias is None:
            return y
        ym = y.reshape(self.m, -1, *self.shape)
        per = (self.m, 1, *self.shape)
        if self.bias is None:
            ym = ym * self.weight.reshape(per)
        elif self.weight is None:
            ym = ym + self.bias.reshape(per)
        else:
            ym = torch.addcmul(self.bias.reshape(per), ym, self.weight.reshape(per))
        return ym.reshape(x.shape)


class _FoldedEmbedding(nn.Module):
    """Ids of the folded batch (M*B, ...) look up their member's table. Ids of batch 1 are shared by
    every row (Hugging Face's position ids): each member's lookup is repeated for its B rows."""

    def __init__(self, m: int, weight, call: "_Call"):
        super().__init__()
        self.m, self.call, self.table = m, call, weight.reshape(-1, weight.shape[-1])  # (M*V, D)
        self.register_buffer("offsets", torch.arange(m, device=weight.device) * weight.shape[1], persistent=False)

    def forward(self, ids):
        if ids.dim() >= 1 and ids.shape[0] == 1:  # the folded batch has M*B >= 2 rows: 1 is a shared row
            y = F.embedding(ids + self.offsets.view(-1, *([1] * (ids.dim() - 1))), self.table)  # (M, ...)
            b = self.call.batch or 1
            return y if b == 1 else y.repeat_interleave(b, dim=0)
        shifted = ids.reshape(self.m, -1) + self.offsets[:, None]
        return F.embedding(shifted, self.table).reshape(*ids.shape, self.table.shape[-1])


class _Call:
    """What the folded layers may need to know of the current call: the members' batch B."""
    batch: int | None = None


def _fold_leaf(mod: nn.Module, m: int, st: dict, call: _Call, channel: bool,
               watch: list[torch.Tensor]) -> nn.Module | str:
    """The folded replacement of one parameter-holding module, or why it cannot be folded.
    st: the module's own parameter and buffer names -> their (M, ...) stacks (None where unset);
    watch: those stacks and the members' own tensors of them (what a cache must check, _stamp)."""
    kind = type(mod)
    if kind is nn.Linear:
        return _FoldedLinear(m, st["weight"], st.get("bias"), channel)
    if kind in _CONV:
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            return f"{kind.__name__} with padding {mod.padding!r}, padding_mode {mod.padding_mode!r}"
        return _FoldedConv(m, mod, st["weight"], st.get("bias"), channel, watch)
    if kind in _BATCHNORM:
        if st.get("running_mean") is None:
            return f"{kind.__name__} without running statistics (it normalizes by the batch)"
        return _FoldedBatchNorm(m, mod, st.get("weight"), st.get("bias"), st["running_mean"], st["running_var"],
                                channel, watch)
    if kind is nn.GroupNorm:
        return _FoldedGroupNorm(m, mod, st.get("weight"), st.get("bias"), channel)
    if channel:
        return f"{kind.__name__} has no channel-fold rule"
    if kind is nn.LayerNorm:
        return _FoldedLayerNorm(m, mod, st.get("weight"), st.get("bias"))
    if kind is nn.Embedding:
        if mod.max_norm is not None:
            return "Embedding with max_norm (it renormalizes rows in place)"
        return _FoldedEmbedding(m, st["weight"], call)
    return f"{kind.__name__} holds parameters and has no folding rule"


def aliases(model: nn.Module) -> dict[str, str]:
    """Every parameter's and buffer's path -> the name named_parameters / named_buffers give it
    (tied tensors, reached by several paths, have one)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for k, t in [*mod._parameters.items(), *mod._buffers.items()]:
            if t is not None:
                out[_path(mname, k)] = first.setdefault(id(t), _path(mname, k))
    return out


def fold(template: nn.Module, state: dict[str, torch.Tensor], names: dict[str, str],
         m: int, dim: int = 0, own: dict[str, list[torch.Tensor]] | None = None) -> tuple["Folded | None", str]:
    """(the folded model, "") or (None, why not).

    template: a meta-device copy of member 0; state: member 0's parameter and buffer names -> the
    members' stacked (M, ...) tensors; names: aliases(member 0); dim: 0 folds the members into
    the batch, 1 into the channels (models with a convolution only); own: the same names -> the
    members' own tensors (the views of the stack they hold), whose writes the folded layers' caches
    must see."""
    own = own or {}
    channel = dim == 1
    if channel and not any(type(mod) in _CONV for mod in template.modules()):
        return None, "no convolution (the channel fold is for convolutional models)"
    model, call = copy.deepcopy(template), _Call()
    done: dict[int, nn.Module] = {}  # id(template module) -> what replaces it (a module at several paths)
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if id(mod) in done:
            model = _put(model, name, done[id(mod)])
            continue
        if mod._forward_hooks or mod._forward_pre_hooks:
            return None, f"{name or '<root>'} has forward hooks"
        tensors = [*mod._parameters.items(), *mod._buffers.items()]
        if not any(v is not None for _, v in tensors):
            continue
        if all(v is None for v in mod._parameters.values()) and type(mod) not in _BATCHNORM:
            for k, v in tensors:  # plain buffers (position ids...): must be the members' common value
                s = state[names[_path(name, k)]] if v is not None else None
                if s is not None and not all(torch.equal(s[0], s[i]) for i in range(1, m)):
                    return None, f"buffer {name + '.' if name else ''}{k} differs between the members"
                if s is not None:
                    mod._buffers[k] = s[0]
            done[id(mod)] = mod
            continue
        if next(mod.children(), None) is not None:
            return None, f"{name}: {type(mod).__name__} holds parameters and submodules"
        held = [names[_path(name, k)] for k, v in tensors if v is not None]
        watch = [t for n in held for t in (state[n], *own.get(n, ()))]
        leaf = _fold_leaf(mod, m, {k: (state[names[_path(name, k)]] if v is not None else None) for k, v in tensors},
                          call, channel, watch)
        if isinstance(leaf, str):
            return None, f"{name or '<root>'}: {leaf}"
        done[id(mod)] = leaf
        model = _put(model, name, leaf)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        return None, f"{left[0]} was not folded"
    return Folded(model, m, call, dim), ""


def _path(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


def _put(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """model with the submodule at `name` replaced by `module` (name "": module is the new model)."""
    if not name:
        return module
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
    return model


class Folded(nn.Module):
    """The folded model called as the vmapped one is: (args, kwargs) of one member's call -> (M, ...)."""

    def __init__(self, model: nn.Module, m: int, call: _Call, dim: int = 0):
        super().__init__()
        self.model, self.m, self.call, self.dim = model, m, call, dim

    def _repeat(self, t):
        """A tensor argument repeated m times along self.dim, member-major (channels_last on a GPU
        where the channel fold gets an image batch)."""
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        if self.dim == 0:
            return t.repeat(self.m, *([1] * (t.dim() - 1)))
        if t.dim() < 2:
            raise ValueError("the channel fold needs tensor arguments of rank >= 2 (batch, channels, ...)")
        y = t.repeat(1, self.m, *([1] * (t.dim() - 2)))
        return y.contiguous(memory_format=torch.channels_last) if y.is_cuda and y.dim() == 4 else y

    def forward(self, args: tuple, kwargs: dict):
        m, d = self.m, self.dim
        leaves = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() >= 1]
        self.call.batch = leaves[0].shape[0] if leaves else None
        fargs, fkwargs = pytree.tree_map(self._repeat, (args, kwargs))
        y = self.model(*fargs, **fkwargs)
        if not isinstance(y, torch.Tensor) or y.dim() <= d or y.shape[d] % m:
            raise ValueError(f"the folded forward's output does not have the members in dim {d}")
        y = y.reshape(*y.shape[:d], m, y.shape[d] // m, *y.shape[d + 1:])
        return y.movedim(d, 0)  # (M, B, ...)


__all__ = ["Folded", "aliases", "fold"]
