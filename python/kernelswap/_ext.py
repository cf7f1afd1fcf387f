"""Loads the optional CUDA extension kernelswap._C without ever breaking import.

The extension is a shared library (stable ABI) that registers its ops into
torch.ops.kernelswap when loaded; it is also a small Python module (csrc/py_entry.cpp:
the raw runs as plain functions, see `python_module`). If it is missing or fails to
load, the reason is kept and shown by `python -m kernelswap info`, and the ops fall
back to the next backend.

Before loading, the CUDA runtime the library links (its libcudart.so.N, read from the ELF
file itself) is compared with torch's: a `+cu12` wheel under a CUDA 13 torch (or a CPU
torch) is refused with a warning and the reason, instead of failing or crashing inside the
loader; the ops then use the Triton and reference paths.
"""
from __future__ import annotations

import glob
import os
import struct
import warnings

import torch

_loaded: bool | None = None
_reason = ""
_path: str | None = None  # the file loaded
_module = None  # python_module()'s answer once asked (False: none)
_refusal: str | None = None  # why load() refused _C (a CUDA major that is not torch's), if it did


def _find_library() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
    return found[0] if found else None


def library_path() -> str | None:
    """The file _C was loaded from (None before a successful load)."""
    return _path


def load() -> bool:
    """Load _C once; True when its ops are registered."""
    global _loaded, _reason, _refusal, _path
    if _loaded is not None:
        return _loaded
    if os.environ.get("KERNELSWAP_DISABLE_EXT", "0") == "1":
        _loaded, _reason = False, "disabled by KERNELSWAP_DISABLE_EXT=1"
        return False
    path = _find_library()
    if path is None:
        _loaded, _reason = False, "not built (pure-Python install; see README 'Install from source')"
        return False
    try:
        needed = needed_libraries(path)
    except (OSError, ValueError, struct.error):  # a damaged file: the loader below says what is wrong
        needed = []
    _refusal = cuda_mismatch(needed, torch.version.cuda, torch.__version__)
    if _refusal:
        _loaded, _reason = False, f"refused {os.path.basename(path)}: {_refusal}"
        warnings.warn(f"kernelswap: {_reason}", RuntimeWarning, stacklevel=2)
        return False
    try:
        torch.ops.load_library(path)
        _loaded, _reason, _path = True, f"loaded from {os.path.basename(path)}", path
    except Exception as e:  # noqa: BLE001 - keep import working whatever went wrong
        _loaded, _reason = False, f"failed to load {os.path.basename(path)}: {e}"
    return _loaded


def python_module():
    """_C, once loaded, imported as the Python module kernelswap._C (csrc/py_entry.cpp), or None
    where it is not loaded or has no module init (a build from before it)."""
    global _module
    if _module is None:
        _module = False
        if load():
            import importlib.machinery
            import importlib.util
            try:
                spec = importlib.util.spec_from_file_location(
                    "kernelswap._C", _path, loader=importlib.machinery.ExtensionFileLoader("kernelswap._C", _path))
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                _module = mod
            except ImportError:  # no PyInit__C in this build
                pass
    return _module or None


def refusal() -> str | None:
    """Why _C was refused (built for another CUDA major than torch's), or None."""
    load()
    return _refusal


def needed_libraries(path: str) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared library, read without loading
    it ([] for any other file)."""
    def section(f, shoff, shentsize, i):  # (type, offset, size, link) of section header i
        f.seek(shoff + i * shentsize)
        _, kind, _, _, offset, size, link = struct.unpack("<IIQQQQI", f.read(44))
        return kind, offset, size, link

    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
            return []
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        for i in range(shnum):
            kind, offset, size, link = section(f, shoff, shentsize, i)
            if kind != 6:  # SHT_DYNAMIC
                continue
            _, str_offset, str_size, _ = section(f, shoff, shentsize, link)
            f.seek(str_offset)
            strings = f.read(str_size)
            f.seek(offset)
            entries = struct.iter_unpack("<qQ", f.read(size - size % 16))
            return [strings[v:strings.index(b"\0", v)].decode() for tag, v in entries if tag == 1]  # DT_NEEDED
    return []


def cuda_mismatch(needed: list[str], torch_cuda: str | None, torch_version: str) -> str | None:
    """Why a library that links `needed` must not be loaded into this torch, or None.

    The CUDA major it was built for is the N of its libcudart.so.N; torch's is torch.version.cuda
    (None for a CPU build). A library that links no versioned libcudart is not judged here."""
    majors = sorted({n[len("libcudart.so."):].split(".")[0] for n in needed if n.startswith("libcudart.so.")})
    if not majors:
        return None
    built = majors[0]
    if torch_cuda is not None and torch_cuda.split(".")[0] == built:
        return None
    have = "a CPU build" if torch_cuda is None else f"built for CUDA {torch_cuda}"
    fix = ("install a CUDA build of torch" if torch_cuda is None else
           f"install the kernelswap wheel whose version ends in +cu{torch_cuda.split('.')[0]}, or build it from the sdist")
    return (f"built for CUDA {built} (it links libcudart.so.{built}) but torch {torch_version} is {have}; "
            f"the ops use the Triton and reference paths. Fix: {fix} (or set KERNELSWAP_DISABLE_EXT=1 to silence this)")


def build_info() -> dict[str, str]:
    """What _C was built with: archs, CUDA version, whether CUTLASS kernels are in."""
    if not load():
        return {}
    raw = bytes(torch.ops.kernelswap._C_build_info().tolist()).decode()
    return dict(item.split("=", 1) for item in raw.splitlines() if "=" in item)


# Torch headers from which a C++ error in _C reaches Python (setup.py asks errors_raise_for too).
SAFE_ERRORS_FROM = (2, 14)


def errors_raise() -> tuple[bool, str]:
    """(whether an argument error inside _C reaches Python as a RuntimeError, why not).

    Built against torch 2.11's headers, an exception thrown by a stable-ABI kernel crashes
    the process (segfault) on torch 2.11 (seen on the H100 machine); built against torch
    2.14's headers (TORCH_TARGET_VERSION 2.11 either way) the same binary raises. 2.12 and
    2.13 headers were not tried, so they count as unsafe. The public ops check every
    argument in Python before calling _C, so this matters only for direct _C_* calls and
    for failures the checks cannot foresee."""
    return errors_raise_for(build_info().get("torch", "unknown"))


def errors_raise_for(raw: str) -> tuple[bool, str]:
    """errors_raise for a build against torch `raw` ("X.Y") headers."""
    try:
        version = tuple(int(v) for v in raw.split(".")[:2])
    except ValueError:
        return False, f"_C does not record the torch headers it was built with ({raw!r}); rebuild"
    if version < SAFE_ERRORS_FROM:
        return False, (f"_C was built against torch {raw} headers: a C++ argument error crashes the process; "
                       f"rebuild with torch >= {'.'.join(map(str, SAFE_ERRORS_FROM))}")
    return True, f"built against torch {raw} headers"


def status() -> tuple[bool, str]:
    """(usable for CUDA tensors now, why / why not)."""
    if not load():
        return False, _reason
    if not torch.cuda.is_available():
        return False, f"{_reason}, but no CUDA device"
    return True, _reason


# ---------------------------------------------------------------- the build's arch list
def _arch_entries(arch_list: str) -> list[tuple[str, bool]]:
    """TORCH_CUDA_ARCH_LIST as built ("8.0;8.9;9.0a+PTX", or space-separated) -> [(arch, with PTX)]."""
    return [(e.split("+")[0].strip(), "+PTX" in e) for e in arch_list.replace(" ", ";").split(";") if e.strip()]


def built_archs(arch_list: str) -> set[str]:
    """TORCH_CUDA_ARCH_LIST as built -> {"8.0", "8.9", "9.0a"}."""
    return {arch for arch, _ in _arch_entries(arch_list)}


def runs_here(arch_list: str, major: int, minor: int) -> bool:
    """Does a build for `arch_list` carry code a GPU of compute capability major.minor runs?
    SASS runs on its own major at an equal or higher minor ("9.0a" only on 9.0); "+PTX" is
    JIT-compiled for any later GPU."""
    for arch, ptx in _arch_entries(arch_list):
        a_major, a_minor = int(arch.split(".")[0]), int(arch.split(".")[1].rstrip("a"))
        if arch.endswith("a"):
            sass = (a_major, a_minor) == (major, minor)
        else:
            sass = a_major == major and a_minor <= minor
        if sass or (ptx and (a_major, a_minor) <= (major, minor)):
            return True
    return False
