"""What every result row is tagged with: GPU, versions, commit, date."""
from __future__ import annotations

import datetime
import os
import subprocess

import torch


def commit() -> str:
    """KERNELSWAP_COMMIT if set (a copied tree has no .git), else `git rev-parse`, else unknown."""
    env = os.environ.get("KERNELSWAP_COMMIT", "").strip()
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict[str, str]:
    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 - record why, never fail
        triton_version = f"absent ({type(e).__name__})"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = "cpu"
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": str(torch.version.cuda),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
