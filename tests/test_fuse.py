"""The "fuse" recipe: conv -> bn [-> add] [-> act] chains in nn.Sequential and through
torch.fx (torchvision ResNet BasicBlock/Bottleneck, MobileNetV2), everything else left."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kernelswap as ks
from kernelswap.nn import ConvBNAct2d
from tests.utils import assert_close_to_ref

# One CPU thread (small ops on a busy 2-core machine ran up to 10x slower on two) and the
# reference backend (the oracle; module tests check wiring and numerics): tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread", "reference_backend")



@pytest.fixture
def torchvision():
    return pytest.importorskip("torchvision")


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Untrained BNs are identities; give them real statistics so folding is tested."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model.eval()


def _check_same_function(model: nn.Module, x: torch.Tensor, recipe="fuse", factor: float = 4.0):
    ref64 = copy.deepcopy(model).double()
    with torch.no_grad():
        baseline = model(x)
        report = ks.swap(model, recipe)
        out = model(x)
        expected = ref64(x.double())
    # Fusing only reorders float rounding: the error stays at the eager fp32 model's level.
    assert_close_to_ref(out, expected, baseline, factor=factor, what=str(recipe))
    return report


def _left(model, *types):
    return [n for n, m in model.named_modules() if type(m) in types]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnet(arch, torchvision):
    model = _randomize_bn(getattr(torchvision.models, arch)(num_classes=10))
    report = _check_same_function(model, torch.randn(2, 3, 32, 32))
    n_conv = 20 if arch == "resnet18" else 53
    blocks = 8 if arch == "resnet18" else 16
    assert len(report.swapped) == n_conv and not report.skipped
    assert _left(model, nn.Conv2d, nn.BatchNorm2d, nn.ReLU) == []
    # Every block's last conv carries the shortcut add and the block's ReLU.
    fused_res = [x for x in report.swapped if "+add+relu" in x.before]
    assert len(fused_res) == blocks
    assert all(x.sqnr_db > 100 for x in report.swapped)
    last = model.layer1[0].conv2 if arch == "resnet18" else model.layer1[0].conv3
    assert isinstance(last, ConvBNAct2d) and last.activation == "relu"
    assert isinstance(model, torchvision.models.ResNet)  # in place: the root object is kept


def test_torchvision_mobilenet_v2(torchvision):
    model = _randomize_bn(torchvision.models.mobilenet_v2(num_classes=10))
    report = _check_same_function(model, torch.randn(2, 3, 32, 32))
    assert len(report.swapped) == 52 and not report.skipped
    assert _left(model, nn.Conv2d, nn.BatchNorm2d, nn.ReLU6) == []
    acts = [x.before for x in report.swapped]
    assert acts.count("Conv2d+BatchNorm2d+relu6") == 35
    assert acts.count("Conv2d+BatchNorm2d+add") == 10  # the inverted-residual add, no activation
    # The rewritten block is a GraphModule whose containers are plain modules: reach layers by name.
    assert model.get_submodule("features.3.conv.2").activation == "identity"
    assert any(m.groups > 1 for m in model.modules() if isinstance(m, ConvBNAct2d))  # depthwise


class _Stem(nn.Module):
    """Functional activations and a shared ReLU module: needs a forward rewrite."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.act = nn.SiLU()

    def forward(self, x):
        y = F.hardswish(self.b1(self.c1(x)))
        z = self.act(self.b2(self.c2(y)))
        return self.act(torch.add(self.b3(self.c3(z)), y))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _Stem()
        self.seq = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),  # fused
                                 nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),  # conv+bn only
                                 nn.Conv2d(8, 8, 1), nn.ReLU())  # no BN: left alone
        self.c_root, self.b_root = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.seq(self.stem(x))
        return F.relu(self.b_root(self.c_root(y)) + y)  # a residual in the top-level forward


def test_custom_graph_activations_and_root_residual():
    model = _randomize_bn(_Net())
    report = _check_same_function(model, torch.randn(2, 3, 10, 10))
    before = {x.name: x.before for x in report.swapped}
    assert before == {"stem.c1": "Conv2d+BatchNorm2d+hardswish", "stem.c2": "Conv2d+BatchNorm2d+silu",
                      "stem.c3": "Conv2d+BatchNorm2d+add+silu", "seq.0": "Conv2d+BatchNorm2d+relu6",
                      "seq.3": "Conv2d+BatchNorm2d", "c_root": "Conv2d+BatchNorm2d"}
    root = next(x for x in report.layers if x.name == "c_root")
    assert "top-level module" in root.reason  # partial: conv+bn only, the add and relu stay
    assert type(model.seq[6]) is nn.Conv2d and type(model.seq[5]) is nn.GELU
    assert isinstance(model.b_root, nn.Identity) and type(model) is _Net


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), _DataDependent(),
                                  nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))

    def forward(self, x):
        return self.body(x) if x.sum() > -1e9 else x  # control flow on data: fx cannot trace it


class _DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.mean() > 0 else x


def test_untraceable_model_falls_back_to_sequential_scan():
    model = _randomize_bn(_Untraceable())
    report = _check_same_function(model, torch.randn(2, 3, 12, 12))
    assert [x.name for x in report.swapped] == ["body.0", "body.4"]
    assert [x.before for x in report.swapped] == ["Conv2d+BatchNorm2d+relu", "Conv2d+BatchNorm2d"]


def test_filter_shared_conv_and_training_mode(torchvision):
    model = _randomize_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        report = ks.swap(model, "fuse", filter=lambda name, mod: not name.startswith("layer4"))
        assert_close_to_ref(model(x), ref.double(), ref, factor=1.0, floor=1e-5, what="filtered")
    skipped = {x.name: x.reason for x in report.skipped}
    assert len(skipped) == 5 and set(skipped.values()) == {"excluded by filter"}
    assert type(model.layer4[0].conv1) is nn.Conv2d

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.conv(self.bn(self.conv(x)))  # the conv is called twice: not a chain

    shared = Shared().eval()
    assert len(ks.swap(shared, "fuse")) == 0 and type(shared.conv) is nn.Conv2d
    with pytest.raises(RuntimeError, match="eval mode.*'layer1.0.bn1' is in training mode"):
        m = torchvision.models.resnet18().eval()
        m.layer1[0].bn1.train()
        ks.swap(m, "fuse")


def test_filter_applies_to_partial_and_rewritten_chains():
    model = _randomize_bn(_Net())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        report = ks.swap(model, "fuse", filter=lambda name, mod: name not in ("c_root", "stem.c3"))
        assert_close_to_ref(model(x), ref.double(), ref, factor=1.0, floor=1e-5, what="filtered")
    assert {x.name for x in report.skipped} == {"c_root", "stem.c3"}
    assert type(model.c_root) is nn.Conv2d and type(model.b_root) is nn.BatchNorm2d
    assert type(model.stem.get_submodule("c3")) is nn.Conv2d and isinstance(model.stem.c2, ConvBNAct2d)


@pytest.mark.parametrize("arch,fused,residual", [("mobilenet_v3_small", 34, 6), ("efficientnet_b0", 49, 0),
                                                  ("regnet_x_400mf", 71, 22)])
def test_more_torchvision_models(arch, fused, residual, torchvision):
    """Hardswish/SiLU blocks, squeeze-excitation convs without BN (left alone), StochasticDepth."""
    model = _randomize_bn(getattr(torchvision.models, arch)(num_classes=10))
    report = _check_same_function(model, torch.randn(2, 3, 64, 64))
    assert len(report.swapped) == fused and sum("+add" in x.before for x in report.swapped) == residual
    assert _left(model, nn.BatchNorm2d) == []


class _OptionalArg(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()

    def forward(self, x, skip=None):  # traced alone, `skip is not None` would always hold
        y = self.bn(self.conv(x)) + x
        return self.relu(y if skip is None else y + skip)


def test_owner_with_optional_arguments_is_not_rewritten():
    model = _randomize_bn(nn.Sequential(_OptionalArg(), _OptionalArg()))
    report = _check_same_function(model, torch.randn(2, 4, 6, 6))
    assert [x.before for x in report.swapped] == ["Conv2d+BatchNorm2d"] * 2
    assert all("optional or variadic arguments" in x.reason for x in report.swapped)
    assert all(type(m) is _OptionalArg for m in model)


def test_conv_whose_weight_is_read_elsewhere_is_left():
    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) * self.conv.weight.abs().mean()

    model = _randomize_bn(ReadsWeight())
    assert len(ks.swap(model, "fuse")) == 0 and type(model.conv) is nn.Conv2d


@pytest.mark.parametrize("c_in,kernel,groups", [(8, 3, 1), (8, 1, 1), (16, 3, 16)], ids=["3x3", "1x1", "depthwise"])
def test_fused_weight_keeps_the_conv_weights_memory_format(c_in, kernel, groups):
    """Fused after .to(channels_last), the folded weight stays channels_last (cuDNN takes it as it
    is, where an NCHW copy would be converted every call); fused from an NCHW model it stays NCHW.
    Either way the function is the conv -> bn -> act one."""
    for fmt in (torch.channels_last, torch.contiguous_format):
        model = _randomize_bn(nn.Sequential(nn.Conv2d(c_in, 16, kernel, padding=kernel // 2, groups=groups,
                                                      bias=False), nn.BatchNorm2d(16), nn.ReLU()))
        model = model.to(memory_format=fmt)
        conv_strides = model[0].weight.stride()
        x = torch.randn(2, c_in, 9, 7).contiguous(memory_format=fmt)
        _check_same_function(model, x)
        (fused,) = [m for m in model.modules() if isinstance(m, ConvBNAct2d)]
        assert fused.weight.stride() == conv_strides, (fmt, fused.weight.stride(), conv_strides)
        assert "weight" in dict(fused.named_buffers())
