"""ks.swap's report and argument checks: a second swap lists what it found already swapped,
a swap that changes nothing says so, rows come in model order, and wrong arguments get a
TypeError naming the argument."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import kernelswap as ks
from kernelswap.nn import ConvBNAct2d, Int8Linear

pytestmark = pytest.mark.usefixtures("one_thread", "reference_backend")


def _mlp():
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8)).eval()


class _Res(nn.Module):
    """conv-bn-relu, conv-bn, + input, relu: swap rewrites this block's forward."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.b2(self.c2(self.relu(self.b1(self.c1(x))))) + x)


class _Net(nn.Module):
    """A stem fused in place (top level) before a residual block fused by a rewrite, then a head."""

    def __init__(self, c=8):
        super().__init__()
        self.stem, self.bn, self.act = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.res = _Res(c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        y = self.res(self.act(self.bn(self.stem(x))))
        return self.head(y.mean((2, 3)))


def _net():
    net = _Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_second_swap_lists_the_swapped_layers_as_left_and_says_nothing_changed():
    model = _mlp()
    x = torch.randn(3, 24)
    assert len(ks.swap(model, "int8").swapped) == 3
    before = model(x)
    report = ks.swap(model, "int4")
    assert not report.swapped and [x.name for x in report.skipped] == ["0", "2", "4"]
    for row in report.skipped:
        assert row.before == "Int8Linear" and row.reason.startswith("already Int8Linear (int8); swap the float model")
        assert "no unswap" in row.reason and row.bytes_before > 0
    text = str(report)
    assert "nothing changed: 0 layers swapped, 3 left" in text.splitlines()[0]
    assert "(left: already Int8Linear (int8)" in text
    assert all(isinstance(model[i], Int8Linear) and model[i].mode == "int8" for i in (0, 2, 4))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # the model is as it was


def test_second_fuse_lists_the_fused_layers_and_linear_recipes_ignore_them():
    model = _net()
    first = ks.swap(model, "fuse", probe=False)
    assert [x.name for x in first.swapped] == ["stem", "res.c1", "res.c2"]
    again = ks.swap(model, ["fuse", "int8"], probe=False)
    left = {x.name: x.reason for x in again.skipped}
    assert set(left) == {"stem", "res.c1", "res.c2"}
    assert all(r.startswith("already ConvBNAct2d (fuse)") for r in left.values())
    assert [x.name for x in again.swapped] == ["head"] and "nothing changed" not in str(again)
    assert sum(isinstance(m, ConvBNAct2d) for m in model.modules()) == 3


def test_a_swap_of_a_model_without_layers_says_nothing_changed():
    report = ks.swap(nn.Sequential(nn.ReLU(), nn.Tanh()).eval(), "int4")
    assert len(report) == 0 and str(report).splitlines() == [
        "kernelswap.swap int4(group_size=128, symmetric=False, method=rtn): nothing changed: the model has no layer these "
        "recipes apply to"]
    excluded = ks.swap(_mlp(), "int8", filter=lambda name, m: False)
    assert "nothing changed: 0 layers swapped, 3 left" in str(excluded)


def test_report_rows_are_in_model_order():
    model = _net()
    report = ks.swap(model, ["fuse", "int8"], probe=False)
    assert [x.name for x in report.layers] == ["stem", "res.c1", "res.c2", "head"]
    rows = [line.split()[0] for line in str(report).splitlines()[2:-1]]
    assert rows == ["stem", "res.c1", "res.c2", "head"]


@pytest.mark.parametrize("recipe, says", [
    (None, "got None"),
    (8, "got int 8"),
    (ks.Int4, "got the class ks.Int4, not a config object: pass ks.Int4()"),
    (ks.Sparse24, "or 'sparse24'"),
    (["fuse", None], "item 1: got None"),
    (("int8", ks.Int8), "item 1: got the class ks.Int8"),
    ({"recipe": "int8"}, "got a dict"),
], ids=["None", "int", "class", "class-name", "list-None", "tuple-class", "dict"])
def test_wrong_recipe_types_name_the_argument(recipe, says):
    model = _mlp()
    with pytest.raises(TypeError, match="kernelswap.swap: recipe must be a recipe name") as e:
        ks.swap(model, recipe)
    assert says in str(e.value) and "ks.Int4(group_size=64)" in str(e.value)
    assert all(type(m) is nn.Linear for m in model[::2])


def test_model_must_be_a_module_and_recipes_may_come_as_any_iterable():
    with pytest.raises(TypeError, match=r"kernelswap.swap: model must be an nn.Module .*got a torch.Tensor"):
        ks.swap(torch.randn(4, 4), "int8")
    with pytest.raises(TypeError, match="model must be an nn.Module.*got None"):
        ks.swap(None, "int8")
    model = _mlp()
    report = ks.swap(model, (r for r in ["int8"]), probe=False)  # a generator: resolve takes any iterable
    assert len(report.swapped) == 3
