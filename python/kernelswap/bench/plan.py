"""The order of work, so that a time budget cuts the least important part.

  0  the TARGETS.md linear cases (P1-P8: their op at their shape, bf16)
  1  the CNN models (P10, P11)
  2  the conv layers at N = 64, bf16 (P9)
  3  the decoder stack
  4  the rest of the first shape set in the first dtype
  5  everything else (other sets, other dtypes)
and after all of these, the compile pass (Runner.deferred). A case that two sets share
(the llm set holds the target shapes too) runs once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import providers as P
from .shapes import ConvShape, shape_set
from .targets import TARGETS

TARGET_CASES = {(t.op, t.shape) for t in TARGETS if not t.op.startswith("model:")}


@dataclass(frozen=True)
class Item:
    priority: int
    kind: str  # "kernel" | "cnn" | "llm"
    op: str = ""
    shape: object = field(default=None, compare=False)
    dtype: torch.dtype | None = None
    shape_set: str = ""


def _priority(op: str, shape, dtype: torch.dtype, first: bool) -> int:
    bf16 = dtype == torch.bfloat16
    if bf16 and (op, shape.label) in TARGET_CASES:
        return 0
    if bf16 and isinstance(shape, ConvShape) and shape.batch == 64 and first:
        return 2
    return 4 if first else 5


def plan(sets: list[str], ops: list[str], dtypes: list[torch.dtype], models: list[str],
         conv_batches: tuple[int, ...] | None = None) -> list[Item]:
    """conv_batches: keep only the conv layers at these batch sizes (None: all)."""
    items, seen = [], set()
    for i, name in enumerate(sets):
        linear, conv = shape_set(name)
        conv = tuple(s for s in conv if conv_batches is None or s.batch in conv_batches)
        for j, dtype in enumerate(dtypes):
            for op in ops:
                for shape in (conv if P.family(op) == "conv" else linear):
                    key = (op, shape.label, dtype)
                    if key not in seen:
                        seen.add(key)
                        items.append(Item(_priority(op, shape, dtype, i == 0 and j == 0), "kernel", op, shape,
                                          dtype, name))
    if "cnn" in models:
        items.append(Item(1, "cnn", shape_set="models"))
    if "llm" in models:
        items.append(Item(3, "llm", shape_set="models"))
    return sorted(items, key=lambda it: it.priority)  # stable: set, dtype, op, shape order within a priority
