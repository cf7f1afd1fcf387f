"""Every config of every Triton kernel compiles for sm_90 and sm_80 (tools/triton_compile.py).

The other CPU tests run the kernels under Triton's interpreter, which accepts kernels that a GPU
compile rejects (a dot-operand layout Hopper cannot lower, for one). This runs Triton's own
compiler for both targets on the launches the public launchers make, in a subprocess without
TRITON_INTERPRET (the interpreter replaces the JIT functions at import), no GPU needed.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (a CPU-only torch)")
def test_every_triton_kernel_config_compiles_for_the_gpu_targets():
    pytest.importorskip("triton.backends.nvidia", reason="this Triton has no NVIDIA backend to compile with")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "triton_compile.py"), "--targets", "90,80"],
                         env=env, capture_output=True, text=True, timeout=900)
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert "0 failed" in run.stdout and " 0 compiles passed" not in run.stdout, report
