"""What the command line says to a newcomer: `demo` on a device it cannot use is one line,
not a traceback; `info`'s line about _C's argument errors reads as a property, not a failure."""
import os
import subprocess
import sys

import pytest
import torch

from kernelswap import _ext, demo, info


@pytest.mark.parametrize("device, says", [
    ("cuda", "no CUDA GPU is visible here (torch.cuda.is_available() is False); run with --device cpu"),
    ("cuda:1", "no CUDA GPU is visible here"),
    ("tpu", "not a device name; use cpu or cuda[:N]"),
    ("meta", "the demo runs on cpu or cuda, not meta"),
])
def test_demo_on_a_device_it_cannot_use_is_one_line(monkeypatch, capsys, device, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.main(["--device", device]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"python -m kernelswap demo: --device {device}: ")
    assert says in err


def test_demo_cuda_without_a_gpu_in_a_fresh_process():
    r = subprocess.run([sys.executable, "-m", "kernelswap", "demo", "--device", "cuda"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("python -m kernelswap demo: --device cuda: no CUDA GPU")


@pytest.mark.parametrize("headers, line", [
    ("2.14", "reach Python as RuntimeError (built against torch 2.14 headers)"),
    ("2.11", "WARNING, may crash the process instead of raising: _C was built against torch 2.11 headers"),
])
def test_info_words_the_argument_error_behaviour(monkeypatch, headers, line):
    monkeypatch.setattr(_ext, "load", lambda: True)
    monkeypatch.setattr(_ext, "build_info", lambda: {"torch": headers, "archs": "9.0a", "cutlass": "1"})
    got = info.collect()
    assert "_C errors" not in got
    assert got["_C argument errors"].startswith(line), got["_C argument errors"]


def test_info_says_where_the_dispatch_thresholds_were_measured(capsys):
    # Every threshold named resolves to the live constant; on a GPU other than sm_90 the status says
    # they were not measured there (issue: sm_80 / sm_89 builds).
    from kernelswap.ops import gemv_cuda, mixed_cuda

    got = dict(info.thresholds())
    assert len(got) == len(info.THRESHOLDS)
    assert got["kernelswap.ops.gemv_cuda.GEMV_UP_TO_M"] is gemv_cuda.GEMV_UP_TO_M
    assert got["kernelswap.ops.mixed_cuda.MIXED_M"] is mixed_cuda.MIXED_M
    assert info.thresholds_status((9, 0)) == "measured on sm_90 (H100 / H200) only"
    for cap in ((8, 0), (8, 9)):
        assert f"NOT measured on this GPU (sm_{cap[0]}{cap[1]})" in info.thresholds_status(cap)
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert "M thresholds" in out and "kernelswap.ops.int8_triton.W8A16_TORCH_FROM_M = " in out
