"""kernelswap._ext's CUDA-major rule: the libcudart.so.N that _C links, read from its ELF file
(checked against readelf), must be torch's CUDA major; otherwise _C is refused before it is
loaded, with a RuntimeWarning and the reason in `python -m kernelswap info`, and the ops keep
working on the other backends. Libraries built here with gcc stand in for _C."""
from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest
import torch

import kernelswap as ks
from kernelswap import _ext, info
from kernelswap.ops import backend

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build stand-in libraries")
needs_readelf = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")
TORCH_MAJOR = torch.version.cuda.split(".")[0] if torch.version.cuda else None


def _readelf_needed(path: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _stand_in(tmp_path, major: str) -> str:
    """tmp_path/_C.so: a shared library that links a stub libcudart.so.<major> (found via $ORIGIN)."""
    (tmp_path / "stub.c").write_text("int cudart_stub(void) { return 1; }\n")
    (tmp_path / "ext.c").write_text("int cudart_stub(void);\nint ext_entry(void) { return cudart_stub(); }\n")
    stub = f"libcudart.so.{major}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / stub), f"-Wl,-soname,{stub}",
                    str(tmp_path / "stub.c")], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "_C.so"), str(tmp_path / "ext.c"),
                    "-Wl,--no-as-needed", f"-L{tmp_path}", f"-l:{stub}", "-Wl,-rpath,$ORIGIN"], check=True)
    return str(tmp_path / "_C.so")


@pytest.fixture
def fresh_ext(monkeypatch):
    """_ext as before its first load(); monkeypatch puts the real state back afterwards."""
    monkeypatch.setattr(_ext, "_loaded", None)
    monkeypatch.setattr(_ext, "_reason", "")
    monkeypatch.setattr(_ext, "_refusal", None)
    monkeypatch.setattr(_ext, "_path", None)
    backend._backend_status.cache_clear()
    yield monkeypatch
    backend._backend_status.cache_clear()


@needs_readelf
def test_needed_libraries_match_readelf():
    libs = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "*.so*")))
    files = [os.path.realpath(sys.executable)] + libs[:6] + [p for p in [_ext._find_library()] if p]
    for path in files:
        assert _ext.needed_libraries(path) == _readelf_needed(path), path


def test_needed_libraries_of_other_files_is_empty(tmp_path):
    (tmp_path / "text").write_text("not a library\n")
    (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01\x01")
    (tmp_path / "elf32").write_bytes(b"\x7fELF\x01\x01\x01" + bytes(57))
    for name in ("text", "short", "elf32"):
        assert _ext.needed_libraries(str(tmp_path / name)) == []


def test_damaged_library_is_a_reason_not_a_crash(tmp_path, fresh_ext):
    damaged = tmp_path / "_C.so"
    head = bytearray(b"\x7fELF\x02\x01\x01".ljust(64, b"\0"))
    struct.pack_into("<Q", head, 0x28, 2**40)  # section headers past the end of the file
    struct.pack_into("<HH", head, 0x3A, 64, 3)
    damaged.write_bytes(bytes(head))
    with pytest.raises((ValueError, struct.error)):
        _ext.needed_libraries(str(damaged))
    fresh_ext.setattr(_ext, "_find_library", lambda: str(damaged))
    assert _ext.load() is False and _ext.refusal() is None
    assert _ext.status()[1].startswith("failed to load _C.so")


@pytest.mark.parametrize("needed, torch_cuda, refused", [
    (["libc10.so", "libcudart.so.12", "libc.so.6"], "13.0", "built for CUDA 12 (it links libcudart.so.12)"),
    (["libcudart.so.13"], "12.8", "install the kernelswap wheel whose version ends in +cu12"),
    (["libcudart.so.13"], None, "is a CPU build"),
    (["libcudart.so.13"], "13.0", None),
    (["libcudart.so.12"], "12.4", None),
    (["libcudart.so", "libc.so.6"], "13.0", None),  # no versioned libcudart: not judged here
    ([], None, None),
])
def test_cuda_mismatch(needed, torch_cuda, refused):
    why = _ext.cuda_mismatch(needed, torch_cuda, "2.14.1")
    if refused is None:
        assert why is None
    else:
        assert refused in why and "KERNELSWAP_DISABLE_EXT=1" in why


@needs_gcc
def test_other_cuda_major_is_refused_not_loaded(tmp_path, fresh_ext, capsys):
    other = "12" if TORCH_MAJOR == "13" else "13"
    lib = _stand_in(tmp_path, other)
    fresh_ext.setattr(_ext, "_find_library", lambda: lib)

    def never(path):
        raise AssertionError(f"a refused library was loaded: {path}")
    fresh_ext.setattr(torch.ops, "load_library", never)
    with pytest.warns(RuntimeWarning, match=f"refused _C.so: built for CUDA {other} "):
        assert _ext.load() is False
    assert f"libcudart.so.{other}" in _ext.refusal()
    assert _ext.status()[0] is False and _ext.build_info() == {}
    ok, why = backend.backend_status("cuda")
    assert not ok and why.startswith("refused _C.so: built for CUDA")
    assert info.main([]) == 0
    shown = capsys.readouterr().out
    assert re.search(rf"_C: WARNING, not usable: refused _C.so: built for CUDA {other} ", shown), shown
    # The layers still run (on the reference path here) and stay close to the float layer.
    torch.manual_seed(0)
    layer = torch.nn.Linear(40, 24).eval()
    x = torch.randn(3, 40)
    with torch.no_grad():
        want = layer(x)
        model = torch.nn.Sequential(layer).eval()
        ks.swap(model, "int8")
        got = model(x)
    assert (got - want).abs().max() < 0.05 * want.abs().max()


@needs_gcc
@pytest.mark.skipif(TORCH_MAJOR is None, reason="a CPU torch refuses every libcudart-linked _C")
def test_same_cuda_major_is_loaded(tmp_path, fresh_ext):
    lib = _stand_in(tmp_path, TORCH_MAJOR)
    fresh_ext.setattr(_ext, "_find_library", lambda: lib)
    loaded = []
    fresh_ext.setattr(torch.ops, "load_library", loaded.append)
    assert _ext.load() is True and _ext.refusal() is None
    assert loaded == [lib]
