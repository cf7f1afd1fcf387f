"""ks.save / ks.load and plain state_dict round trips: identical outputs; a mismatched or
corrupt file is a clear error and leaves the model untouched."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

safetensors = pytest.importorskip("safetensors")
from safetensors.torch import load_file, save_file  # noqa: E402

import kernelswap as ks
from kernelswap.nn import KernelswapModule
from tests.utils import assert_exact

# One CPU thread (small ops on a busy 2-core machine ran up to 10x slower on two) and the
# reference backend (the oracle; module tests check wiring and numerics): tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread", "reference_backend")



def _mlp(seed: int = 0, hidden: int = 48) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, hidden), nn.ReLU(), nn.Linear(hidden, 40), nn.LayerNorm(40),
                         nn.Linear(40, 8)).eval()


def _resnet(seed: int = 0) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    m = torchvision.models.resnet18(num_classes=10).eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_var.uniform_(0.5, 2.0)
    return m


def _snapshot(model: nn.Module):
    return [(n, type(m)) for n, m in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model, snap):
    modules, state = snap
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("recipe", ["int8", "int8-weight", "int4", "sparse24", "sparse24-int8"])
def test_round_trip_linear_recipes(recipe, tmp_path):
    model = _mlp(seed=0)
    ks.swap(model, recipe, probe=False)
    path = tmp_path / "m.safetensors"
    ks.save(model, path)
    fresh = _mlp(seed=1)  # different float weights: everything must come from the file
    assert ks.load(fresh, path) is fresh
    x = torch.randn(3, 5, 40)
    assert_exact(fresh(x), model(x), recipe)
    assert [type(m) for m in fresh] == [type(m) for m in model]


def test_round_trip_mixed_recipes_and_fused_resnet(tmp_path):
    model = _resnet(0)
    ks.swap(model, "fuse", probe=False)
    ks.swap(model, ks.Int4(group_size=64), filter=lambda n, m: n == "fc", probe=False)
    path = tmp_path / "r.safetensors"
    ks.save(model, path)
    meta_recipes = json.loads(safetensors.safe_open(str(path), "pt").metadata()["recipes"])
    assert {json.loads(k)["recipe"] for k in meta_recipes} == {"fuse", "int4"}
    fresh = _resnet(1)
    ks.load(fresh, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_exact(fresh(x), model(x), "resnet18 fuse + int4 fc")
    assert fresh.fc.group_size == 64


def test_state_dict_through_safetensors_into_a_swapped_copy(tmp_path):
    model = _mlp()
    ks.swap(model, "int4", probe=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "sd.safetensors"))
    other = _mlp(seed=3)
    ks.swap(other, "int4", probe=False)
    other.load_state_dict(load_file(str(tmp_path / "sd.safetensors"), device="cpu"))
    x = torch.randn(4, 40)
    assert_exact(other(x), model(x))


def test_half_model_saved_then_loaded_into_float(tmp_path):
    model = _mlp()
    ks.swap(model, "int8-weight", probe=False)
    model.half()
    ks.save(model, tmp_path / "h.safetensors")
    fresh = ks.load(_mlp(seed=1), tmp_path / "h.safetensors").half()
    x = torch.randn(2, 40).half()
    assert_exact(fresh(x), model(x))


def test_corrupt_file_leaves_model_untouched(tmp_path):
    model = _mlp()
    ks.swap(model, "int8", probe=False)
    good = tmp_path / "good.safetensors"
    ks.save(model, good)
    data = good.read_bytes()
    fresh = _mlp(seed=1)
    snap = _snapshot(fresh)
    flipped = bytearray(data)
    flipped[-3] ^= 0x10  # a bit in the tensor data: only the checksum notices
    for name, blob in {"truncated": data[: len(data) // 2], "garbage": b"\x00" * 64,
                       "bad-header": data[:8] + b"\xff" + data[9:], "flipped-bit": bytes(flipped)}.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match="not a readable safetensors file|checksum"):
            ks.load(fresh, bad)
        _assert_untouched(fresh, snap)
    with pytest.raises(FileNotFoundError):
        ks.load(fresh, tmp_path / "missing.safetensors")


def test_mismatched_files_leave_model_untouched(tmp_path):
    model = _mlp()
    ks.swap(model, "int4", probe=False)
    path = tmp_path / "m.safetensors"
    ks.save(model, path)

    wider = _mlp(hidden=64)  # same layer names, other shapes: found only after swapping, then undone
    snap = _snapshot(wider)
    with pytest.raises(ValueError, match=r"tensor '0\.\w+' is \(48.*same architecture"):
        ks.load(wider, path)
    _assert_untouched(wider, snap)

    resnet = _resnet()
    snap = _snapshot(resnet)
    with pytest.raises(ValueError, match="swapped layer '0'.*this model has nothing there"):
        ks.load(resnet, path)
    _assert_untouched(resnet, snap)

    tensors, meta = load_file(str(path)), safetensors.safe_open(str(path), "pt").metadata()
    for key, value, match in [("format_version", "2", "format version '2'"), ("sha256", "0" * 64, "checksum"),
                              ("format", "something-else", "not written by kernelswap.save"),
                              ("recipes", json.dumps({json.dumps({"recipe": "int5"}): ["0"]}), "damaged")]:
        bad = tmp_path / f"{key}.safetensors"
        save_file(tensors, str(bad), metadata={**meta, key: value})
        fresh = _mlp()
        snap = _snapshot(fresh)
        with pytest.raises(ValueError, match=match):
            ks.load(fresh, bad)
        _assert_untouched(fresh, snap)

    tensors["0.format_version"] = torch.tensor([7], dtype=torch.int32)  # a module format from elsewhere
    bad = tmp_path / "module-version.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "sha256": ks.serialization._digest(tensors)})
    fresh = _mlp()
    snap = _snapshot(fresh)
    with pytest.raises(RuntimeError, match="format version 7"):
        ks.load(fresh, bad)
    _assert_untouched(fresh, snap)


def test_save_and_load_misuse(tmp_path):
    with pytest.raises(ValueError, match="holds no kernelswap layers"):
        ks.save(_mlp(), tmp_path / "x.safetensors")
    model = _mlp()
    ks.swap(model, "int8", probe=False)
    ks.save(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="already holds kernelswap layers"):
        ks.load(copy.deepcopy(model), tmp_path / "m.safetensors")
    training = _mlp().train()
    with pytest.raises(RuntimeError, match="eval mode"):
        ks.load(training, tmp_path / "m.safetensors")
    assert not any(isinstance(m, KernelswapModule) for m in training.modules())
