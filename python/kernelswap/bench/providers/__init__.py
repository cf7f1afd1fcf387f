"""Who gets timed: our ops (per backend) and every baseline and peer, per op.

A Provider builds a Case for one (shape, dtype, device): a function and a factory of
fresh argument tuples. The harness makes several copies of the arguments and rotates
through them so the working set exceeds L2; `fn` is built once (a torch.compile'd
baseline compiles once, not once per copy).

A provider whose package or op is missing raises Absent (recorded as "absent: why");
any other exception at setup or while timing is recorded as an error with its message.
Nothing is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class Absent(Exception):
    """The provider cannot exist on this machine (package not importable, op missing)."""


@dataclass
class Case:
    fn: Callable[..., object]
    # One fresh copy of every tensor fn reads. Linear providers draw x, then the (N, K) weight, then
    # the bias, and conv providers the conv/bn init, then x: under one seed, every provider of an op
    # computes the same layer (tests/test_bench.py checks the baselines against ours that way).
    new_args: Callable[[], tuple]
    flops: float  # dense-equivalent math of one call
    weight_bytes: int  # bytes of the weights one call reads, in this provider's format
    io_bytes: int  # activations in + out of one call
    note: str = ""


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str  # "ours" | "baseline" | "peer"
    make: Callable[[object, torch.dtype, torch.device], Case]
    backend: str | None = None  # ours: backend forced while timing (None: automatic dispatch)
    slow: bool = False  # compiles at setup (torch.compile): left out of --quick
    requires: str | None = None  # a module that must be importable, else the row says "absent"


# op -> (family, providers in table order: ours first, then baselines, then peers)
_REGISTRY: dict[str, tuple[str, list[Provider]]] = {}


def register(op: str, family: str, provider: Provider) -> None:
    _REGISTRY.setdefault(op, (family, []))[1].append(provider)


def ops() -> list[str]:
    _load()
    return list(_REGISTRY)


def family(op: str) -> str:
    _load()
    return _REGISTRY[op][0]


def providers(op: str) -> list[Provider]:
    _load()
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(_REGISTRY)}")
    return list(_REGISTRY[op][1])


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


_LOADED = False


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        # Import order is table order: linear families, then conv, then the optional peers.
        from . import int8, int4, sparse24, conv, peers  # noqa: F401 - each registers its providers
        from . import fp8  # noqa: F401 - FP8 (Hopper) W8A8, after the int8 families' peers
