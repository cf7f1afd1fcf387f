"""Test helpers: baseline-relative tolerances, exact integer checks, SQNR, devices.

Float paths: the error of a result against a float64 reference must be within
`factor` times the error PyTorch itself makes at the same precision (the baseline).
Integer paths: exact. Quantized layers: SQNR in dB against the float layer.
"""
from __future__ import annotations

import os

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Leading dims / token counts that catch off-by-one tiling: empty, one, odd, prime.
AWKWARD_M = (0, 1, 3, 17)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_device() -> str | None:
    """Where the Triton kernel tests run: "cpu" under TRITON_INTERPRET=1, else "cuda" when there is a
    GPU, else None (the test module is skipped: needs_kernel_device)."""
    if interpreting():
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are empty or zero)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def _worst(out: torch.Tensor, ref: torch.Tensor) -> str:
    diff = (out.double() - ref.double()).abs()
    if diff.numel() == 0:
        return "empty"
    both_nan = torch.isnan(out.double()) & torch.isnan(ref.double())
    # NaN against a number counts as the worst; NaN against NaN is a match, not a difference
    diff = torch.where(both_nan, 0.0, diff.nan_to_num(nan=float("inf")))
    flat = int(diff.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return f"worst at {idx}: got {out[idx].item():.6g}, expected {ref[idx].item():.6g}"


def assert_close_to_ref(out: torch.Tensor, ref64: torch.Tensor, baseline: torch.Tensor,
                        factor: float = 2.0, floor: float = 1e-6, what: str = "") -> None:
    """out's error vs ref64 must be <= factor * max(baseline's error, floor)."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(out).any() or torch.isnan(ref64).any(), f"{what}: NaN in output, none in reference"
    err, base = rel_err(out, ref64), rel_err(baseline, ref64)
    bound = factor * max(base, floor)
    assert err <= bound, (f"{what}: relative error {err:.3e} > {factor} x baseline {base:.3e} "
                          f"(bound {bound:.3e}); {_worst(out, ref64)}")


def assert_exact(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    bad = out != ref
    if out.is_floating_point():
        bad &= ~(torch.isnan(out) & torch.isnan(ref))
    n_bad = int(bad.sum())
    assert n_bad == 0, (f"{what}: {n_bad} of {out.numel()} elements differ "
                        f"({100.0 * n_bad / max(out.numel(), 1):.2f}%); {_worst(out, ref)}")


def assert_repeats_and_replays(fn, what: str = "") -> None:
    """fn() gives the same bits on repeated runs and replayed from a CUDA graph captured on a side
    stream (split-K partials added in a fixed order; no host state read at replay)."""
    first = fn()
    assert all(torch.equal(first, fn()) for _ in range(5)), f"{what}: repeated runs differ"
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            captured = fn()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, first), f"{what}: the replay differs from the eager run"


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of approx against ref, in dB."""
    ref, approx = ref.double(), approx.double()
    noise = (ref - approx).norm().item()
    return float("inf") if noise == 0 else 20.0 * torch.log10(torch.tensor(ref.norm().item() / noise)).item()


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous view (every other column of a wider tensor)."""
    wide = torch.empty((*t.shape[:-1], t.shape[-1] * 2), dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    view = wide[..., ::2]
    assert not view.is_contiguous() or t.shape[-1] <= 1 or t.numel() == 0
    return view


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_kernel_device = pytest.mark.skipif(kernel_device() is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")

# The CUDA extension kernelswap._C (tests/test_cuda_ext.py, tests/test_sparse24_sm80.py).
from kernelswap import _ext  # noqa: E402 - after the helpers that need no kernelswap

needs_ext = pytest.mark.skipif(not _ext.load(), reason="kernelswap._C is not built (KERNELSWAP_BUILD_CUDA=off)")
CUTLASS = _ext.load() and _ext.build_info().get("cutlass") == "1"
needs_cutlass = pytest.mark.skipif(not CUTLASS, reason="kernelswap._C built without CUTLASS")
# A build against old torch headers crashes instead of raising (kernelswap._ext.errors_raise):
# its error tests cannot run in this process; `python -m kernelswap info` says so too.
ERRORS_RAISE, ERRORS_WHY = _ext.errors_raise() if _ext.load() else (False, "no _C")
raises_safely = pytest.mark.skipif(not ERRORS_RAISE, reason=ERRORS_WHY)
needs_sm80 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                                reason="needs a CUDA device of sm_80 or newer")
ON_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_sm90_cutlass = pytest.mark.skipif(not (ON_SM90 and CUTLASS), reason="needs an sm_90 GPU and a CUTLASS build")
