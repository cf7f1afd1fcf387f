"""Journal: the undo log of module replacements.

swap (kernelswap.swap, kernelswap.fuse) replaces modules through a Journal, so a failed
kernelswap.load can put every original module back and leave the model untouched.
"""
from __future__ import annotations

from torch import nn


class Journal:
    """Every module replacement made, so a failed kernelswap.load can undo them."""

    def __init__(self):
        self.entries: list[tuple[nn.Module, str, nn.Module]] = []

    def replace(self, root: nn.Module, path: str, new: nn.Module) -> None:
        parent_path, _, attr = path.rpartition(".")
        parent = root.get_submodule(parent_path) if parent_path else root
        old = getattr(parent, attr)
        self.entries.append((parent, attr, old))
        setattr(parent, attr, new.train(old.training))  # new modules (GraphModules too) start in training mode

    def undo(self) -> None:
        for parent, attr, old in reversed(self.entries):
            setattr(parent, attr, old)
        self.entries.clear()


__all__ = ["Journal"]
