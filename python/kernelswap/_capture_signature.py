"""ks.capture's input signatures (no GPU needed): the structure of a call's arguments plus, per
leaf, a tensor's shape, dtype and device or a non-tensor's type and value (kernelswap.capture's
docstring says why), and the bounded LRU map from a signature to its captured graph."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree


def _tree(args: tuple, kwargs: dict) -> tuple:
    return args, dict(sorted(kwargs.items()))  # keyword order does not make another signature


def _leaf_key(leaf: Any, where: Callable[[], str]) -> tuple:
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device)
    key = ("value", type(leaf), leaf)
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"ks.capture: the argument {where()} is a {type(leaf).__name__}, which is neither a tensor "
                        f"nor hashable, so a call cannot be matched to a captured graph; pass tensors, "
                        f"Python scalars/strings, or tuples/lists/dicts of them") from None
    return key


def signature(args: tuple, kwargs: dict) -> tuple[tuple, list, Any]:
    """(the signature of a call, its flat leaves, their tree spec: None for positional tensors only).

    Two calls with equal signatures can replay the same graph: the same argument structure,
    each tensor of the same shape, dtype and device, each non-tensor argument equal and of
    the same type (1, 1.0 and True differ). Keyword order does not matter."""
    if not kwargs and all(isinstance(a, torch.Tensor) for a in args):  # the common call, without pytree
        return (len(args), tuple(("tensor", tuple(a.shape), a.dtype, a.device) for a in args)), list(args), None
    leaves, spec = pytree.tree_flatten(_tree(args, kwargs))
    keys = tuple(_leaf_key(leaf, lambda i=i: leaf_path(args, kwargs, i)) for i, leaf in enumerate(leaves))
    return (spec, keys), leaves, spec


def unflatten(leaves: list, spec: Any) -> tuple[tuple, dict]:
    """(args, kwargs) from the leaves and spec that `signature` returned."""
    return (tuple(leaves), {}) if spec is None else pytree.tree_unflatten(leaves, spec)


def leaf_path(args: tuple, kwargs: dict, index: int) -> str:
    """The argument that flat leaf `index` of a call came from, e.g. args[0] or kwargs['cache'][1]."""
    path = pytree.tree_flatten_with_path(_tree(args, kwargs))[0][index][0]
    return ("args" if path[0].idx == 0 else "kwargs") + pytree.keystr(path[1:])


def describe(sig: tuple) -> str:
    """A readable one-line form of a signature, for error messages."""
    parts = []
    for key in sig[1]:
        if key[0] == "tensor":
            _, shape, dtype, device = key
            parts.append(f"{str(dtype).removeprefix('torch.')}{list(shape)}@{device}")
        else:
            parts.append(repr(key[2]))
    return "(" + ", ".join(parts) + ")"


class GraphCache:
    """An LRU map signature -> captured graph holding at most `size` entries."""

    def __init__(self, size: int):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"ks.capture: cache_size must be a positive int, got {size!r}")
        self.size = size
        self._entries: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, sig: tuple) -> Any | None:
        entry = self._entries.get(sig)
        if entry is not None:
            self._entries.move_to_end(sig)
        return entry

    def put(self, sig: tuple, entry: Any) -> list[tuple]:
        """Insert as the most recent; returns the signatures evicted to stay within size."""
        self._entries[sig] = entry
        self._entries.move_to_end(sig)
        evicted = []
        while len(self._entries) > self.size:
            evicted.append(self._entries.popitem(last=False)[0])
        return evicted

    def clear(self) -> None:
        self._entries.clear()

    def keys(self) -> list[tuple]:
        """Least recently used first."""
        return list(self._entries)

    def __contains__(self, sig: tuple) -> bool:
        return sig in self._entries

    def __len__(self) -> int:
        return len(self._entries)
