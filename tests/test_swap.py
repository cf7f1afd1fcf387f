"""ks.swap: recipes by name and config, filter, skip reasons, the report, torch.compile,
batch dims, dtypes, no_grad / inference_mode, device moves."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.nn import Int4Linear, Int8Linear, Sparse24Linear
from tests.utils import assert_exact, needs_cuda, sqnr_db

# One CPU thread (small ops on a busy 2-core machine ran up to 10x slower on two) and the
# reference backend (the oracle; module tests check wiring and numerics): tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread", "reference_backend")


class Block(nn.Module):
    """A small transformer-ish block: attention (nn.MultiheadAttention) + MLP."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 10, bias=False)

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.down(torch.relu(self.up(self.norm(x))))
        return self.head(x)


def _model(seed=0):
    torch.manual_seed(seed)
    return Block().eval()


RECIPES = {"int8": Int8Linear, "int8-weight": Int8Linear, "int4": Int4Linear, "sparse24": Sparse24Linear,
           "sparse24-int8": Sparse24Linear}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_swap_by_name_and_report(recipe):
    model = _model()
    x = torch.randn(2, 5, 64)
    ref = model(x).detach()
    report = ks.swap(model, recipe)
    assert isinstance(report, ks.SwapReport) and report.recipes == [str(ks.recipes.get_recipe(recipe))]
    assert [x.name for x in report.swapped] == ["up", "down", "head"]
    assert all(isinstance(getattr(model, n), RECIPES[recipe]) for n in ("up", "down", "head"))
    (left,) = report.skipped  # the attention's out_proj is used through its .weight
    assert left.name == "attn.out_proj" and "MultiheadAttention" in left.reason
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    up = report.swapped[0]
    assert up.before == "Linear" and up.after == RECIPES[recipe].__name__ and up.bytes_before == (64 * 256 + 256) * 4
    assert up.bytes_after < up.bytes_before and up.sqnr_db > (5 if "sparse" in recipe else 15)
    assert report.bytes_after < report.bytes_before
    text = str(report)
    assert "attn.out_proj" in text and "left: used by nn.MultiheadAttention" in text and "SQNR" in text
    json.dumps(report.to_dict())
    out = model(x)
    assert out.shape == ref.shape and sqnr_db(ref, out) > (3 if "sparse" in recipe else 12)


def test_config_objects_filter_and_combination():
    model = _model()
    report = ks.swap(model, ks.Int4(group_size=32, symmetric=True), filter=lambda name, mod: name != "head")
    assert model.up.group_size == 32 and model.up.symmetric and model.up.zeros is None
    assert type(model.head) is nn.Linear
    assert {x.name: x.reason for x in report.skipped}["head"] == "excluded by filter"
    report = ks.swap(model, ["fuse", "int8"])  # fuse finds no conv; int8 takes what is left
    assert [x.name for x in report.swapped] == ["head"] and isinstance(model.head, Int8Linear)


def test_recipe_errors():
    with pytest.raises(ValueError, match="unknown recipe 'int3'"):
        ks.swap(_model(), "int3")
    with pytest.raises(ValueError, match="at most one linear recipe"):
        ks.swap(_model(), ["int8", "int4"])
    with pytest.raises(ValueError, match="group_size must be one of"):
        ks.Int4(group_size=100)
    model = _model().train()
    with pytest.raises(RuntimeError, match="eval mode.*call model.eval"):
        ks.swap(model, "int8")
    assert type(model.up) is nn.Linear


def test_layers_a_recipe_cannot_take_are_reported():
    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(16, 16), Custom(16, 16), nn.Linear(16, 16)).eval()
    model[2].weight.data[3, 3] = float("inf")
    model[0].weight.data[0, :] = 2e6  # an int4 scale (range / 15) would overflow fp16
    report = ks.swap(model, "int4")
    reasons = {x.name: x.reason for x in report.skipped}
    assert "own forward" in reasons["1"] and "NaN or Inf" in reasons["2"] and "float16" in reasons["0"]
    assert not report.swapped and all(type(m) is not Int4Linear for m in model)


def test_shared_module_swapped_everywhere_and_example_inputs():
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared).eval()
    x = torch.randn(4, 32) * 3 + 1
    report = ks.swap(model, "int8-weight", example_inputs=x)
    assert len(report.swapped) == 1 and model[0] is model[2] and isinstance(model[0], Int8Linear)
    probe_on_x = sqnr_db(shared(x), model[0](x))
    assert abs(report.swapped[0].sqnr_db - probe_on_x) < 1e-6  # probed with the real input


@pytest.mark.parametrize("recipe", ["int8", "int8-weight", "int4", "sparse24", "sparse24-int8"])
def test_torch_compile_fullgraph(recipe):
    model = _model()
    ks.swap(model, recipe, probe=False)
    x = torch.randn(2, 7, 64)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: any break raises
    with torch.no_grad():  # inference: the ops have no autograd formula (the swapped weights have no grads)
        assert_exact(compiled(x), eager, recipe)


def test_torch_compile_fused_convs():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    ks.swap(model, ["fuse", "int8"], probe=False)
    x = torch.randn(1, 3, 32, 32)
    eager = model(x)
    torch._dynamo.reset()
    with torch.inference_mode():
        assert_exact(torch.compile(model, fullgraph=True, backend="aot_eager")(x), eager, "resnet18 fuse+int8")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("recipe", ["int8", "int4", "sparse24"])
def test_half_models_batch_dims_and_grad_modes(dtype, recipe):
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32)).eval()
    ref = copy.deepcopy(model)
    ks.swap(model, recipe)
    model.to(dtype)
    for shape in [(64,), (3, 64), (2, 0, 64), (2, 3, 5, 64)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            out = model(x.to(dtype))
        with torch.no_grad():
            again = model(x.to(dtype))
            want = ref(x)
        assert out.dtype == dtype and out.shape == (*shape[:-1], 32)
        assert_exact(out, again)
        if out.numel():
            assert sqnr_db(want, out) > (3 if recipe == "sparse24" else 10)


@needs_cuda
@pytest.mark.parametrize("recipe", ["int8", "int8-weight", "int4", "sparse24", "sparse24-int8", "fuse"])
def test_swapped_model_moves_to_cuda(recipe):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    ks.swap(model, [recipe] if recipe == "fuse" else ["fuse", recipe], probe=False)
    x = torch.randn(2, 3, 32, 32)
    cpu = model(x)
    with ks.use_backend(None):
        gpu = model.to("cuda")(x.cuda())
        assert sqnr_db(cpu, gpu.float().cpu()) > 30
        half = model.half()(x.cuda().half())
        assert half.dtype == torch.float16 and sqnr_db(cpu, half.float().cpu()) > 20


def test_torch_compile_default_backend():
    """The default (inductor) backend too; one small model, since compiling costs seconds on CPU."""
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32)).eval()
    ks.swap(model, "int8", probe=False)
    x = torch.randn(3, 5, 64)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        assert_exact(compiled(x), model(x), "inductor int8")  # the ops are opaque; ReLU is exact
