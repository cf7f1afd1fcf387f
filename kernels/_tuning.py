"""Shared autotuning plumbing for kernelswap's Triton kernels.

- `autotune(configs, key, smem=...)`: triton.autotune with
  * a shared-memory guard that drops configs whose pipelined tiles cannot fit the
    device's shared memory (so a config list tuned for an H100 still runs on an A100);
  * `cache_results=True`: tuned choices are stored in Triton's on-disk cache, keyed by
    the GPU target (e.g. cuda sm_90) and the tuning key, so a second process on the
    same kind of GPU does not tune again;
  * a single config under TRITON_INTERPRET=1 (the CPU interpreter cannot time anything)
    or KERNELSWAP_AUTOTUNE=0 (one launch per call, e.g. under compute-sanitizer);
  * `quick=True`: each config timed over 20 ms after 5 of warm-up (`quick_bench`) instead of
    Triton's 100 ms after 25.
- `TileBytes`: how a kernel tells the guard its per-stage shared-memory footprint.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import triton


# Read once: Triton itself binds kernels to the interpreter when they are defined, and a
# per-call os.environ lookup sat on every launch's host path.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """TRITON_INTERPRET=1 at import."""
    return _INTERPRETING


def tuning_off() -> bool:
    """Only each kernel's first config: under the interpreter, or when KERNELSWAP_AUTOTUNE=0."""
    return interpreting() or os.environ.get("KERNELSWAP_AUTOTUNE", "1") == "0"


@functools.lru_cache(maxsize=None)
def max_shared_memory(device_index: int) -> int:
    """Opt-in shared memory per block, read off the device (never hard-coded)."""
    props = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return int(props["max_shared_mem"])


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    props = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return int(props["multiprocessor_count"])


@dataclass(frozen=True)
class TileBytes:
    """Per-stage shared memory of a config: sum over operands of rows x cols x bytes.

    operands: (row meta-name, col meta-name, tensor arg name, divisor) tuples, e.g.
    ("BLOCK_M", "BLOCK_K", "a", 1); the element size is read off the tensor argument,
    and `divisor` shrinks an operand stored packed (2 int4 codes a byte -> 2).
    """
    operands: tuple[tuple[str, str, str, int], ...]

    def __call__(self, config: triton.Config, named_args: dict) -> int:
        total = 0
        for rows, cols, arg, divisor in self.operands:
            elem = named_args[arg].element_size()
            total += config.kwargs[rows] * config.kwargs[cols] * elem // divisor
        return total * max(1, config.num_stages)


def _smem_pruner(tile_bytes: TileBytes | None) -> Callable:
    def prune(configs, named_args, **kwargs):
        if tuning_off():
            return configs[:1]
        if tile_bytes is None:
            return configs
        first = next(v for v in named_args.values() if hasattr(v, "device"))
        limit = max_shared_memory(first.device.index or 0)
        kept = [c for c in configs if tile_bytes(c, named_args) <= limit]
        # Never prune to nothing: the smallest config is the least likely to overflow.
        return kept or [min(configs, key=lambda c: tile_bytes(c, named_args))]

    return prune


def quick_bench(fn, quantiles):
    """Triton's do_bench over 20 ms after 5 ms of warm-up, for kernels tuned at many shapes (a CNN's
    conv layers: every new layer shape tunes at the model's first call, 0.75 s for 6 configs at
    Triton's default) or whose configs differ by tens of percent, not by noise."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def autotune(configs: list[triton.Config], key: list[str], smem: TileBytes | None = None, quick: bool = False,
             **kwargs):
    """triton.autotune with the shared-memory guard, on-disk result cache and interpreter collapse;
    quick: time each config with quick_bench."""
    if tuning_off():
        configs = configs[:1]
    if quick:
        kwargs["do_bench"] = quick_bench
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _smem_pruner(smem)},
                           cache_results=True, **kwargs)
