"""tools/bootstrap.sh's stamps, run against a stand-in .venv/bin/python that only logs what it
is asked to do: a second run on an up-to-date .venv installs and builds nothing, a change in
csrc/ rebuilds only the extension, KERNELSWAP_BUILD_CUDA=off skips it. (The real install is
what .ci/run does.)"""
import os
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Logs every call; `setup.py build_ext` prints two ninja -v lines and writes the library.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$1" in
  -c) echo "torch 2.14.1" ;;
  setup.py) echo "[1/2] /cuda/bin/nvcc --flags -c $PWD/csrc/a.cu -o $PWD/build/a.o -O3"
            echo "[2/2] c++ -MMD -c $PWD/csrc/ext.cpp -o $PWD/build/ext.o"
            [ -n "$FAKE_NO_TOOLKIT" ] && { echo "kernelswap: not building _C (CUDA_HOME / nvcc not found)"; exit 0; }
            touch python/kernelswap/_C.so ;;
esac
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None,
                                reason="needs bash and sha256sum")


@pytest.fixture
def tree(tmp_path):
    for d in ("tools", "csrc", "python/kernelswap", "kernels", ".venv/bin"):
        (tmp_path / d).mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "tools", "bootstrap.sh"), tmp_path / "tools")
    for f in ("setup.py", "pyproject.toml", "python/kernelswap/_version.py", "python/kernelswap/_ext.py"):
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    (tmp_path / "python/kernelswap/__init__.py").write_text("")
    (tmp_path / "kernels/__init__.py").write_text("")
    (tmp_path / "csrc/a.cu").write_text("// a\n")
    (tmp_path / "csrc/ext.cpp").write_text("// ext\n")
    fake = tmp_path / ".venv/bin/python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def _run(tree, **env):
    log = tree / "calls.log"
    log.write_text("")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KERNELSWAP_", "TORCH_CUDA_ARCH_LIST"))}
    r = subprocess.run(["bash", "tools/bootstrap.sh"], cwd=tree, capture_output=True, text=True, timeout=60,
                       env={**base, "FAKE_LOG": str(log), "CUDA_HOME": str(tree / "no-cuda"), **env})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, log.read_text().splitlines()


def _pip_installs(calls):
    return [c for c in calls if c.startswith("-m pip install")]


def _pip_steps() -> int:
    """How many `pip_step` installs tools/bootstrap.sh makes (its own lines, plus the editable install)."""
    script = open(os.path.join(ROOT, "tools", "bootstrap.sh")).read().splitlines()
    return sum(line.startswith("pip_step ") for line in script) + 1


def test_second_run_installs_and_builds_nothing(tree):
    out, calls = _run(tree)
    assert len(_pip_installs(calls)) == _pip_steps() and any("-e ." in c for c in calls)
    assert any(c.startswith("setup.py -q build_ext --inplace") for c in calls)
    assert "bootstrap: extension [1/2] csrc/a.cu" in out and "bootstrap: extension [2/2] csrc/ext.cpp" in out
    assert "--flags" not in out  # the compile commands themselves are not echoed
    out, calls = _run(tree)
    assert not _pip_installs(calls) and not any(c.startswith("setup.py") for c in calls), calls
    assert "torch: already installed" in out and "extension: up to date (python/kernelswap/_C.so)" in out


def test_a_change_in_csrc_or_a_switch_rebuilds_only_the_extension(tree):
    _run(tree)
    (tree / "csrc/a.cu").write_text("// a, edited\n")
    out, calls = _run(tree)
    assert not _pip_installs(calls) and sum(c.startswith("setup.py") for c in calls) == 1
    _, calls = _run(tree, TORCH_CUDA_ARCH_LIST="8.0;9.0a")
    assert sum(c.startswith("setup.py") for c in calls) == 1
    (tree / "python/kernelswap/_C.so").unlink()  # stamp matches, library gone: build again
    _, calls = _run(tree, TORCH_CUDA_ARCH_LIST="8.0;9.0a")
    assert sum(c.startswith("setup.py") for c in calls) == 1
    _, calls = _run(tree, TORCH_CUDA_ARCH_LIST="8.0;9.0a", KERNELSWAP_BOOTSTRAP_FORCE="1")
    assert len(_pip_installs(calls)) == _pip_steps() and sum(c.startswith("setup.py") for c in calls) == 1


def test_build_cuda_off_skips_the_extension_and_a_missing_toolkit_is_remembered(tree):
    out, calls = _run(tree, KERNELSWAP_BUILD_CUDA="off")
    assert not any(c.startswith("setup.py") for c in calls) and "not built (KERNELSWAP_BUILD_CUDA=off)" in out
    assert any("-e ." in c for c in calls)
    out, calls = _run(tree, FAKE_NO_TOOLKIT="1")
    assert sum(c.startswith("setup.py") for c in calls) == 1 and "not building _C" in out
    out, calls = _run(tree, FAKE_NO_TOOLKIT="1")
    assert not any(c.startswith("setup.py") for c in calls) and "none built" in out
