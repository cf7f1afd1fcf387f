"""Release packaging: the metadata a wheel and the sdist carry (read back from `setup.py
egg_info`, against README.md's compatibility table), the sdist holding every tracked file the
build needs, and tools/build_wheel.sh refusing a toolkit or torch of the wrong CUDA major before
it compiles anything."""
from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
from packaging.specifiers import SpecifierSet
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "KERNELSWAP_BUILD_CUDA": "off"}  # metadata and file lists do not need the extension


def _setup(*args: str) -> None:
    subprocess.run([sys.executable, "setup.py", "-q", *args], cwd=ROOT, env=ENV, check=True,
                   capture_output=True, text=True)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    base = tmp_path_factory.mktemp("egg")
    _setup("egg_info", "--egg-base", str(base))
    with open(base / "kernelswap.egg-info" / "PKG-INFO", encoding="utf-8") as f:
        return email.parser.Parser().parse(f)


def _readme_range(row: str) -> tuple[str, str]:
    """README.md's Compatibility table: the 'supported' cell of `row`, e.g. ('2.11', '2.14')."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    cell = re.search(rf"^\| {row} \| ([^|]+) \|", text, re.M).group(1).strip()
    return tuple(re.findall(r"\d+\.\d+", cell)) + (("",) if cell.endswith("+") else ())


def test_torch_range_is_the_readme_one(metadata):
    low, high = _readme_range("torch")
    torch_req = [Requirement(r) for r in metadata.get_all("Requires-Dist") if r.startswith("torch")]
    assert len(torch_req) == 1, metadata.get_all("Requires-Dist")
    spec = torch_req[0].specifier
    for version, inside in [(f"{low}.0", True), (f"{high}.9", True), (f"{high}.0+cu130", True),
                            (_prev(low), False), (_next(high), False)]:
        assert spec.contains(version, prereleases=False) is inside, (str(spec), version)


def _prev(v: str) -> str:
    major, minor = v.split(".")
    return f"{major}.{int(minor) - 1}.0"


def _next(v: str) -> str:
    major, minor = v.split(".")
    return f"{major}.{int(minor) + 1}.0"


def test_python_versions(metadata):
    low = _readme_range("Python")[0]
    assert SpecifierSet(metadata["Requires-Python"]) == SpecifierSet(f">={low}")
    listed = [c.rsplit(":: ", 1)[1] for c in metadata.get_all("Classifier") if re.match(r"Programming Language :: Python :: 3\.\d+$", c)]
    assert listed and all(SpecifierSet(metadata["Requires-Python"]).contains(f"{v}.0") for v in listed), listed


def test_long_description_is_the_readme(metadata):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == readme.strip()


def test_declared_dependencies_cover_save_and_load(metadata):
    names = {Requirement(r).name for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
    assert {"torch", "numpy", "safetensors"} <= names, names


def test_no_urls_claimed(metadata):
    # No project home page exists yet: the metadata must not name one.
    assert metadata.get("Home-page") in (None, "", "UNKNOWN") and not metadata.get_all("Project-URL")


@pytest.mark.skipif(shutil.which("git") is None or (not os.path.isdir(os.path.join(ROOT, ".git"))
                    and not os.path.isfile(os.path.join(ROOT, ".git"))), reason="needs a git checkout")
def test_sdist_holds_every_tracked_build_file(tmp_path):
    _setup("sdist", "--dist-dir", str(tmp_path))
    (sdist,) = tmp_path.glob("kernelswap-*.tar.gz")
    with tarfile.open(sdist) as tar:
        inside = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(["git", "ls-files", "csrc", "kernels", "python", "setup.py", "pyproject.toml",
                              "MANIFEST.in", "README.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    missing = sorted(set(tracked) - inside)
    assert not missing, f"{sdist.name} lacks {missing}: add them to MANIFEST.in"
    assert not [n for n in inside if n.endswith((".so", ".o"))], "built files in the sdist"


def _fake_toolkit(tmp_path, release: str):
    (tmp_path / "bin").mkdir()
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.0'\n")
    nvcc.chmod(0o755)
    return str(tmp_path)


def _other_major_target() -> tuple[str, dict]:
    """The target whose CUDA major is not this torch's (cu12 unless torch is a CUDA 12 build), with a
    fake toolkit of that major and this interpreter: the torch-major check must refuse it."""
    import torch
    if torch.version.cuda and torch.version.cuda.startswith("12."):
        return "cu13", {"KERNELSWAP_CUDA13_HOME": "TOOLKIT_13.0", "KERNELSWAP_CUDA13_PYTHON": sys.executable}
    return "cu12", {"KERNELSWAP_CUDA12_HOME": "TOOLKIT_12.8", "KERNELSWAP_CUDA12_PYTHON": sys.executable}


@pytest.mark.parametrize("target, env, message", [
    ("cu12", {}, "set KERNELSWAP_CUDA12_HOME to a CUDA 12 toolkit"),
    ("cu11", {}, "unknown target 'cu11'"),
    ("cu13", {"KERNELSWAP_CUDA13_HOME": "TOOLKIT_12.8"}, "is CUDA 12.8, not 13.x"),
    ("other-major", None, "is built for CUDA"),
])
def test_build_wheel_checks_before_compiling(tmp_path, target, env, message):
    if env is None:
        target, env = _other_major_target()
    env = {k: _fake_toolkit(tmp_path, v.split("_")[1]) if v.startswith("TOOLKIT_") else v for k, v in env.items()}
    run = subprocess.run(["bash", "tools/build_wheel.sh", target], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **env, "PYTHON": sys.executable})
    assert run.returncode != 0 and message in run.stderr, run.stderr
    assert "pip wheel" not in run.stdout + run.stderr
