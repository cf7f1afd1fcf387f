"""Run by tools/clean_venv_test.sh from a folder outside the source tree, with an installed
kernelswap: checks the import is the installed package, then a CPU swap + save + load.

  python tools/installed_smoke.py SITE [cuda|refused]

SITE: the folder kernelswap must be imported from. The second argument says what the wheel's
_C must do under this interpreter's torch: `cuda` load (same CUDA major), `refused` be refused
with a warning (another CUDA major, or a CPU torch), never a crash either way."""
from __future__ import annotations

import os
import sys
import tempfile
import warnings

import torch
from torch import nn


def main(site: str, expect: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import kernelswap as ks
        from kernelswap import _ext, info
    where = os.path.realpath(ks.__file__)
    assert where.startswith(os.path.realpath(site)), f"kernelswap imported from {where}, not from {site}"
    ok, why = _ext.status()
    if expect == "cuda":
        assert _ext.load() and _ext.refusal() is None, f"the wheel's _C did not load: {why}"
        print("installed_smoke: _C loaded:", _ext.build_info())
    else:
        refusal = _ext.refusal()
        assert refusal and not _ext.load(), f"_C was not refused: {why}"
        assert any(refusal in str(w.message) for w in caught), "no warning named the refusal"
        assert info.collect()["_C"].startswith("WARNING, not usable: refused"), info.collect()["_C"]
        print("installed_smoke: _C refused as it must be:", refusal)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(72, 56), nn.GELU(), nn.Linear(56, 24)).eval()
    fresh = nn.Sequential(nn.Linear(72, 56), nn.GELU(), nn.Linear(56, 24)).eval()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(5, 72)
    with torch.no_grad():
        want = model(x)
        report = ks.swap(model, "int8")
        assert len(report.swapped) == 2, str(report)
        got = model(x)
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err < 0.05 * scale, f"int8 swap error {err} against a float output of magnitude {scale}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        ks.save(model, path)
        ks.load(fresh, path)
    with torch.no_grad():
        again = fresh(x)
    assert torch.equal(again, got), "the loaded model does not give the saved model's outputs"
    print(f"installed_smoke: CPU int8 swap (max error {err:.4f} of {scale:.3f}), save and load: OK")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cuda")
