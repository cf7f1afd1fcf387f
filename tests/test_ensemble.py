"""ks.ensemble: outputs equal a Python loop over the members for every combine mode, for
one architecture (batched through vmap) and mixed ones (float, swapped, other types)."""
from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch import nn

import kernelswap as ks
from tests.utils import needs_cuda

pytestmark = pytest.mark.usefixtures("one_thread")


class SmallCNN(nn.Module):
    def __init__(self, width: int = 6, classes: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class SmallMLP(nn.Module):
    def __init__(self, classes: int = 7):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 24), nn.GELU(), nn.Linear(24, classes))

    def forward(self, x):
        return self.net(x)


def _cnn(**kw) -> SmallCNN:
    m = SmallCNN(**kw)
    with torch.no_grad():  # BN statistics that are not the identity, so that stacking them matters
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.normal_()
    return m.eval()


def _loop(members, combine, x):
    """The reference: call each member, combine by hand (vote counted with collections.Counter)."""
    with torch.no_grad():
        outs = [m(x) for m in members]
    if combine == "mean":
        return sum(outs) / len(outs)
    if combine == "softmax-mean":
        return sum(o.softmax(-1) for o in outs) / len(outs)
    if combine == "max":
        return torch.stack(outs).max(0).values
    votes = torch.stack([o.argmax(-1) for o in outs])  # (members, batch)
    winners = []
    for col in votes.t().tolist():
        counts = collections.Counter(col)
        best = max(counts.values())
        winners.append(min(c for c, n in counts.items() if n == best))
    return torch.tensor(winners, device=outs[0].device)


def _check(ens, members, combine, x):
    with torch.no_grad():
        got = ens(x)
    want = _loop(members, combine, x)
    if combine == "vote":
        assert got.dtype == torch.int64 and torch.equal(got, want), (got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combine", ["mean", "softmax-mean", "max", "vote"])
def test_same_architecture_runs_batched_and_matches_loop(combine):
    members = [_cnn() for _ in range(4)]
    x = torch.randn(5, 3, 9, 7)
    ens = ks.ensemble(members, combine, batched=True)
    assert ens.batched_groups == [[0, 1, 2, 3]]
    _check(ens, members, combine, x)


@pytest.mark.parametrize("combine", ["mean", "softmax-mean", "max", "vote"])
def test_mixed_architectures_match_loop(combine):
    swapped = _cnn()
    ks.swap(swapped, "int8", probe=False)
    members = [_cnn(), SmallMLP().eval(), _cnn(), swapped, _cnn(width=4)]
    x = torch.randn(3, 3, 5, 5)
    ens = ks.ensemble(members, combine, batched=True)
    assert ens.batched_groups == [[0, 2]]  # same type and shapes; width 4 and the swapped one run alone
    _check(ens, members, combine, x)


def test_members_hold_views_of_the_stacked_weights():
    members = [_cnn() for _ in range(3)]
    ens = ks.ensemble(members, batched=True)
    with torch.no_grad():
        members[1].fc.weight.mul_(-2.0)  # written through the member: the batched forward sees it
    _check(ens, members, "mean", torch.randn(2, 3, 6, 6))


def test_cpu_default_runs_members_plainly():
    members = [_cnn() for _ in range(3)]
    ens = ks.ensemble(members, "vote")
    assert ens.batched_groups == [] and not ens.batched
    _check(ens, members, "vote", torch.randn(4, 3, 6, 6))
    assert ks.ensemble([_cnn(), _cnn()], batched=False).batched_groups == []
    with pytest.raises(TypeError, match="batched must be None"):
        ks.ensemble([_cnn()], batched="yes")


def test_refuses_members_with_different_output_shapes():
    ens = ks.ensemble([_cnn(classes=7), _cnn(classes=5)])
    with pytest.raises(ValueError, match=r"member 0 gives an output of shape \(2, 7\) but member 1 gives \(2, 5\)"):
        ens(torch.randn(2, 3, 6, 6))


def test_bad_arguments():
    m = _cnn()
    with pytest.raises(ValueError, match="combine must be one of"):
        ks.ensemble([m, _cnn()], "median")
    with pytest.raises(ValueError, match="no models"):
        ks.ensemble([])
    with pytest.raises(ValueError, match="member 1 is the same module object as member 0"):
        ks.ensemble([m, m])
    with pytest.raises(ValueError, match="member 1 is in training mode"):
        ks.ensemble([m, SmallMLP()])
    with pytest.raises(TypeError, match="member 0 returned a tuple"):
        ks.ensemble([_Pair().eval()])(torch.randn(2, 3))


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


def test_swap_in_place_is_noticed():
    members = [_cnn() for _ in range(3)]
    ens = ks.ensemble(members, "softmax-mean", batched=True)
    assert ens.batched_groups == [[0, 1, 2]]
    ks.swap(ens, "int8", probe=False)  # swaps the members' Linear layers through the ensemble
    x = torch.randn(4, 3, 6, 6)
    _check(ens, members, "softmax-mean", x)
    assert ens.batched_groups == []


def test_save_load_swapped_ensemble(tmp_path):
    members = [_cnn() for _ in range(3)]
    for m in members:
        ks.swap(m, ["fuse", "int8"], probe=False)
    ens = ks.ensemble(members, "mean")
    ks.save(ens, tmp_path / "ens.safetensors")
    fresh = ks.ensemble([_cnn() for _ in range(3)], "mean")  # float members built the same way
    ks.load(fresh, tmp_path / "ens.safetensors")
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), ens(x))


def test_float_ensemble_state_dict_copy_and_dtype():
    members = [_cnn() for _ in range(3)]
    ens = ks.ensemble(members, "max", batched=True)
    x = torch.randn(2, 3, 6, 6)
    fresh = ks.ensemble([_cnn() for _ in range(3)], "max", batched=True)
    fresh.load_state_dict(ens.state_dict())  # restacked after the load
    clone = copy.deepcopy(ens)
    with torch.no_grad():
        members[0].fc.bias.add_(100.0)  # the deep copy holds its own weights
        torch.testing.assert_close(fresh(x), clone(x))
        torch.testing.assert_close(ens(x), _loop(members, "max", x))
    wide = copy.deepcopy(ens).to(torch.float64)
    assert wide.batched_groups == [[0, 1, 2]]
    with torch.no_grad():
        torch.testing.assert_close(wide(x.double()), _loop(members, "max", x).double(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("combine", ["mean", "vote"])
def test_cuda_streams_match_loop(combine):
    swapped = _cnn()
    ks.swap(swapped, "int8", probe=False)
    members = [m.cuda() for m in (_cnn(), _cnn(), SmallMLP().eval(), swapped)]
    ens = ks.ensemble(members, combine)  # batched=None: stacked on the GPU
    assert ens.batched_groups == [[0, 1]] and len(ens._streams) == 3
    _check(ens, members, combine, torch.randn(6, 3, 5, 5, device="cuda"))


def test_same_shapes_other_hyperparameters_are_not_stacked():
    a, b, c = _cnn(), _cnn(), _cnn()
    b.conv2.stride = (1, 1)  # same parameter shapes, another computation: must not share a's forward
    ens = ks.ensemble([a, b, c], batched=True)
    assert ens.batched_groups == [[0, 2]]
    _check(ens, [a, b, c], "mean", torch.randn(2, 3, 6, 6))
