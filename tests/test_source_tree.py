"""The source tree agrees with itself: generated files are what their generator writes,
and the version is written once."""
import os
import re
import shutil
import subprocess
import sys

import kernelswap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATE = os.path.join(ROOT, "csrc", "generate.py")


def _check(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True, timeout=60)


def test_committed_instantiations_are_what_generate_writes():
    r = _check(GENERATE)
    assert r.returncode == 0, f"csrc/generate.py --check failed:\n{r.stdout}\n{r.stderr}"


def test_generate_check_reports_edited_missing_and_extra_files(tmp_path):
    csrc = tmp_path / "csrc"
    shutil.copytree(os.path.join(ROOT, "csrc"), csrc, ignore=shutil.ignore_patterns("*.h", "*.cuh", "*.cpp"))
    script = str(csrc / "generate.py")
    assert _check(script).returncode == 0
    edited = csrc / "sm90" / "inst_int8.cu"
    edited.write_text(edited.read_text().replace("DType::kBF16, Tiles::kSmall", "DType::kBF16, Tiles::kLarge"))
    (csrc / "sm80" / "inst_sparse24_fp16.cu").unlink()
    (csrc / "sm80" / "inst_stale.cu").write_text("// left over\n")
    r = _check(script)
    assert r.returncode == 1
    assert "-template void run_gemm<false, DType::kI8, DType::kBF16, Tiles::kLarge>" in r.stdout
    assert "+template void run_gemm<false, DType::kI8, DType::kBF16, Tiles::kSmall>" in r.stdout
    assert "+++ b/csrc/sm80/inst_sparse24_fp16.cu" in r.stdout
    assert "--- a/csrc/sm80/inst_stale.cu" in r.stdout
    assert "run python csrc/generate.py" in r.stderr
    # --check wrote nothing; a plain run repairs the folder and leaves the files it would not change alone
    assert (csrc / "sm80" / "inst_stale.cu").exists()
    untouched = csrc / "sm90" / "inst_fp8.cu"
    os.utime(untouched, (1_000_000_000, 1_000_000_000))
    subprocess.run([sys.executable, script], check=True, timeout=60)
    assert _check(script).returncode == 0
    assert not (csrc / "sm80" / "inst_stale.cu").exists()
    assert untouched.stat().st_mtime == 1_000_000_000, "an unchanged file was rewritten (its object would rebuild)"


def test_version_is_written_once():
    writes = []
    for folder, _, files in os.walk(os.path.join(ROOT, "python")):
        writes += [os.path.join(folder, f) for f in files if f.endswith(".py")
                   and re.search(r"^__version__ *=", open(os.path.join(folder, f)).read(), re.M)]
    assert [os.path.relpath(p, ROOT) for p in writes] == [os.path.join("python", "kernelswap", "_version.py")]
    env = dict(os.environ, KERNELSWAP_BUILD_CUDA="off")
    r = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == kernelswap.__version__


def test_csrc_defaults_and_device_check_have_one_home():
    """The KERNELSWAP_WITH_CUTLASS default and check_device live in csrc/common.h only."""
    homes = {"#define KERNELSWAP_WITH_CUTLASS": [], "void check_device(": []}
    for folder, _, files in os.walk(os.path.join(ROOT, "csrc")):
        for f in files:
            if f.endswith((".h", ".cuh", ".cu", ".cpp")):
                text = open(os.path.join(folder, f)).read()
                for needle, found in homes.items():
                    if needle in text:
                        found.append(os.path.relpath(os.path.join(folder, f), ROOT))
    assert homes == {k: [os.path.join("csrc", "common.h")] for k in homes}
