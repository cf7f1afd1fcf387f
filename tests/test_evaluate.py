"""ks.evaluate and `python -m kernelswap evaluate` on CPU: every report field for a small model
and two recipes, checked against figures computed here independently; the metric hook; errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.evaluate import CPU_NOTE, _cli, _models
from tests.utils import needs_cuda

pytestmark = pytest.mark.usefixtures("one_thread")


class OwnForward(nn.Linear):
    """A Linear subclass with its own forward: swap must leave it, with the reason."""

    def forward(self, x):
        return super().forward(x) * 0.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 40)
        self.odd = OwnForward(40, 40)
        self.fc2 = nn.Linear(40, 11)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.odd(torch.relu(self.fc1(x)))))


def _net() -> Net:
    torch.manual_seed(1)
    m = Net()
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _mse(out, ref):
    return {"mse": float(((out - ref) ** 2).mean())}


RECIPES = ["fuse", "fuse+int8"]


@pytest.fixture(scope="module")
def evaluated(one_thread):
    model = _net()
    batches = [torch.randn(5, 3, 7, 6), torch.randn(3, 3, 7, 6)]  # awkward sizes, two batches
    report = ks.evaluate(model, batches, RECIPES, metric=_mse, repeats=3, progress=False, name="net")
    return model, batches, report


def _swapped(model, recipe):
    m = copy.deepcopy(model)
    ks.swap(m, recipe.split("+"), probe=False)
    return m


def test_report_fields(evaluated):
    model, batches, report = evaluated
    d = report.to_dict()
    assert d["model"] == "net" and d["batch"] == 5 and d["batches"] == 2
    assert d["env"]["note"] == CPU_NOTE and "CPU smoke run" in d["env"]["note"]
    assert [r["recipe"] for r in d["results"]] == RECIPES
    float_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert d["float"]["weight_bytes"] == float_bytes
    for row in [d["float"], *d["results"]]:
        lat = row["latency"]["eager"]
        assert 0 < lat["p20_ms"] <= lat["median_ms"] <= lat["p80_ms"] and lat["repeats"] == 3
        assert lat["throughput_per_s"] == pytest.approx(5 / (lat["median_ms"] / 1e3))
        assert row["latency"]["captured"] == {"skipped": "CUDA graphs need a GPU"}
        assert row["memory"] is None  # peak GPU memory: GPU only
        assert row["file_bytes"] > 0.9 * row["weight_bytes"]
    assert d["float"]["accuracy"]["cosine_min"] == pytest.approx(1.0) and d["float"]["accuracy"]["max_abs_error"] == 0
    for row in d["results"]:
        assert row["reload_max_abs_diff"] == 0.0  # ks.save -> ks.load gives the same outputs
        assert row["swap_s"] > 0
    int8 = d["results"][1]
    assert int8["weight_bytes"] < d["float"]["weight_bytes"] and int8["layers_swapped"] == 3
    assert int8["layers_left"] == 1


@pytest.mark.parametrize("i", range(len(RECIPES)))
def test_accuracy_and_metric_match_an_independent_computation(evaluated, i):
    model, batches, report = evaluated
    row = report["results"][i]
    swapped = _swapped(model, RECIPES[i])
    with torch.no_grad():
        outs = [swapped(b).double() for b in batches]
        refs = [model(b).double() for b in batches]
    cos = torch.cat([torch.nn.functional.cosine_similarity(o, r, dim=1) for o, r in zip(outs, refs)])
    acc = row["accuracy"]
    assert acc["cosine_mean"] == pytest.approx(float(cos.mean()), abs=1e-9)
    assert acc["cosine_min"] == pytest.approx(float(cos.min()), abs=1e-9)
    assert acc["max_abs_error"] == pytest.approx(max(float((o - r).abs().max()) for o, r in zip(outs, refs)))
    agree = sum(int((o.argmax(1) == r.argmax(1)).sum()) for o, r in zip(outs, refs))
    assert acc["top1_agreement"] == pytest.approx(100.0 * agree / 8)
    mse = [float(((o.float() - r.float()) ** 2).mean()) for o, r in zip(outs, refs)]
    assert row["metric"]["mse"] == pytest.approx(sum(mse) / 2, rel=1e-5)
    assert report["float"]["metric"] == {"mse": 0.0}


def test_per_layer_table(evaluated):
    _, _, report = evaluated
    fuse, int8 = (r["per_layer"] for r in report["results"])
    assert [x["name"] for x in fuse["layers"]] == ["conv"]
    assert sorted(x["name"] for x in int8["layers"]) == ["conv", "fc1", "fc2"]
    for x in int8["layers"]:
        assert x["backend"] == "reference" and x["time_ms"] > 0 and 0 < x["share"] <= 1
        assert x["ops"][0].startswith(("int8_linear:", "conv_bn_act:"))
    assert 0 < int8["swapped_share"] <= 1
    assert int8["left"] == [{"name": "odd", "recipe": "int8", "before": "OwnForward",
                             "reason": "OwnForward subclasses nn.Linear with its own forward"}]


def test_write(evaluated, tmp_path):
    _, _, report = evaluated
    paths = report.write(tmp_path)
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == sorted(
        ["report.json", "report.md", "time_vs_accuracy.png", "layer_breakdown.png", "sizes.png"])
    assert json.loads((tmp_path / "report.json").read_text())["results"][1]["recipe"] == "fuse+int8"
    md = (tmp_path / "report.md").read_text()
    assert "CPU smoke run" in md and "| fuse+int8 |" in md and "odd (OwnForward, int8)" in md
    for p in paths:
        if p.endswith(".png"):
            assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_keyword_inputs_and_reference_outputs():
    model = _net()
    x = torch.randn(2, 3, 5, 5)
    kw = ks.evaluate(model, {"x": x}, ["int8"], repeats=2, progress=False, logits=False)
    assert kw["results"][0]["accuracy"]["top1_agreement"] is None
    given = [torch.zeros(2, 11)]  # a reference of our own: accuracy of the float model against it too
    r = ks.evaluate(model, x, "int8", reference=given, repeats=2, progress=False)
    with torch.no_grad():
        assert r["float"]["accuracy"]["max_abs_error"] == pytest.approx(float(model(x).abs().max()))
    assert r["reference"] == "the given reference"


def test_errors():
    model = _net()
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(ValueError, match="unknown recipe 'int3'"):
        ks.evaluate(model, x, ["fuse+int3"], progress=False)
    with pytest.raises(ValueError, match="inputs is empty"):
        ks.evaluate(model, [], ["int8"], progress=False)
    with pytest.raises(ValueError, match="leading batch dimension"):
        ks.evaluate(model, torch.randn(0, 3, 5, 5), ["int8"], progress=False)
    with pytest.raises(ValueError, match="no recipes"):
        ks.evaluate(model, x, [], progress=False)
    with pytest.raises(TypeError, match="batch 1 is a str"):
        ks.evaluate(model, [x, "x"], ["int8"], progress=False)
    with pytest.raises(RuntimeError, match="eval mode"):
        ks.evaluate(Net(), x, ["int8"], progress=False)
    with pytest.raises(ImportError, match="pip install no-such-package"):
        _models.need("no_such_module_for_kernelswap", "no-such-package", "--model x")


def test_cli(tmp_path, capsys):
    assert _cli.main(["--model", "demo-mlp", "--recipes", "int8,int4", "--repeats", "2", "--batch", "100",
                      "--out", str(tmp_path), "--no-progress", "--no-plots"]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["recipe"] for r in data["results"]] == ["int8", "int4"]
    assert data["results"][0]["accuracy"]["top1_agreement"] >= 95.0  # a trained MLP keeps its answers
    for argv, msg in ((["--model", "vgg"], "unknown model 'vgg'"), (["--recipes", "int8,int5"], "unknown recipe"),
                      (["--batch", "0"], "--batch must be at least 1")):
        with pytest.raises(SystemExit) as e:
            _cli.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.gpu
@needs_cuda
def test_gpu_fields():
    model = _net().cuda()
    r = ks.evaluate(model, torch.randn(4, 3, 8, 8, device="cuda"), ["fuse+int8"], repeats=3, progress=False)
    row = r["results"][0]
    assert row["memory"]["peak_bytes"] >= row["memory"]["forward_bytes"] > 0
    captured = row["latency"]["captured"]
    assert "median_ms" in captured or captured["skipped"].startswith("ks.capture failed")
    assert r["env"]["gpu"] and "CPU smoke run" not in r["env"]["note"]
    assert all(x["backend"] in ks.ops.BACKENDS for x in row["per_layer"]["layers"])


def test_cli_hf_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    assert _cli.main(["--hf", str(tmp_path / "tiny"), "--recipes", "int8", "--batch", "3", "--repeats", "2",
                      "--out", str(tmp_path / "out"), "--no-progress", "--no-plots"]) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["model"] == "tiny" and data["results"][0]["layers_swapped"] == 8  # 7 per layer + lm_head
    assert data["results"][0]["metric"]["kl_nats_per_token"] >= 0
