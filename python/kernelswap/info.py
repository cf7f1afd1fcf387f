"""`python -m kernelswap info`: what this install is and which backend serves each op."""
from __future__ import annotations

import platform
import sys

import torch

from . import __version__, _ext
from .ops import PUBLIC_OPS, backend


def collect() -> dict:
    info = {
        "kernelswap": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"not importable ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
    else:
        info["gpu"] = "none visible"
    ok, why = _ext.status()
    info["_C"] = ("usable: " if ok else "WARNING, not usable: " if _ext.refusal() else "not usable: ") + why
    info["_C build"] = ", ".join(f"{k}={v}" for k, v in _ext.build_info().items()) or "-"
    if _ext.load():
        safe, why = _ext.errors_raise()
        # What happens when a C++ check inside _C fails, not an error that happened.
        info["_C argument errors"] = f"reach Python as RuntimeError ({why})" if safe else \
            f"WARNING, may crash the process instead of raising: {why}"
    for name in backend.BACKENDS:
        ok, why = backend.backend_status(name)
        info[f"backend {name}"] = ("yes: " if ok else "no: ") + why
    forced = backend.forced_backend()
    info["forced backend"] = forced or "none (automatic)"
    info["FP8 GEMMs"] = _fp8_status()
    info["M thresholds"] = thresholds_status(torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None)
    return info


# The dispatcher's M (and weight-size) thresholds, (module in kernelswap.ops, name): each was read
# off benchmarks run on sm_90 GPUs only (H100, H200; the comment beside each names the run).
THRESHOLDS = (("gemv_cuda", "GEMV_UP_TO_M"), ("mixed_cuda", "MIXED_M"), ("int8_cuda", "INT8_TRITON_UP_TO_M"),
              ("int8_cuda", "INT8_TRITON_FROM_NK"), ("sparse24_cuda", "SPARSE24_TRITON_UP_TO_M"),
              ("int8_triton", "W8A16_TORCH_FROM_M"), ("int4_triton", "TORCH_FROM_M"),
              ("sparse24_cslt", "CSLT_FROM_M"))
MEASURED_ON = (9, 0)


def thresholds() -> list[tuple[str, object]]:
    """(kernelswap.ops.<module>.<name>, its value) for every entry of THRESHOLDS."""
    import importlib

    return [(f"kernelswap.ops.{mod}.{name}", getattr(importlib.import_module(f"kernelswap.ops.{mod}"), name))
            for mod, name in THRESHOLDS]


def thresholds_status(capability: tuple[int, int] | None) -> str:
    """Whether the dispatcher's thresholds were measured on a GPU of this compute capability."""
    base = "measured on sm_90 (H100 / H200) only"
    if capability is None or tuple(capability) == MEASURED_ON:
        return base
    return (f"{base}; NOT measured on this GPU (sm_{capability[0]}{capability[1]}): the dispatcher applies "
            f"them as they are, so a choice near one may not be the fastest here (time it: "
            f"benchmarks/never_slower.py)")


def _fp8_status() -> str:
    """Whether the "fp8" / "sparse24-fp8" recipes run their sm_90a GEMMs on GPU 0, or why not."""
    if not torch.cuda.is_available():
        return "no: no GPU visible (the reference serves)"
    if not _ext.load():
        return "no: kernelswap._C is not built (the reference serves)"
    from .ops.fp8_cuda import fp8_gpu_reason
    why = fp8_gpu_reason(0)
    return "yes: sm_90a CUTLASS e4m3 GEMMs, bfloat16 layers" if why is None else f"no: {why}"


def op_table() -> list[tuple[str, str, str]]:
    """(op, device, backends in preference order) for CPU and, if present, CUDA."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [(op, d.type, " > ".join(backend.serving_backends(op, d)) or "-") for op in PUBLIC_OPS for d in devices]


def main(argv: list[str] | None = None) -> int:
    if argv:
        print(f"python -m kernelswap info: takes no options, got {argv}", file=sys.stderr)
        return 2
    for key, value in collect().items():
        print(f"{key:>18}: {value}")
    print("\nops (backends that can serve them here, first choice first; shape rules may skip one):")
    for op, dev, backends in op_table():
        print(f"  {op:<24} {dev:<5} {backends}")
    print("\nthe dispatcher's thresholds (see 'M thresholds' above):")
    for name, value in thresholds():
        print(f"  {name} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
