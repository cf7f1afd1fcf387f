"""ks.ensemble's folds: same-architecture members folded into the batch dim (Linear -> baddbmm,
norms as per-member affines, Embedding -> offset ids) or, for CNNs, into the channel dim (grouped
convolutions), each against a Python loop over the members (tests/test_ensemble.py's helpers)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import kernelswap as ks
from tests.test_ensemble import SmallMLP, _check, _cnn, _loop
from tests.utils import needs_cuda

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------ folded into the batch or channel dim
class TinyEncoder(nn.Module):
    """Embedding (tied to the output head), attention from Linear + softmax, LayerNorm, GELU."""

    def __init__(self, vocab: int = 23, d: int = 12, heads: int = 3):
        super().__init__()
        self.emb, self.heads = nn.Embedding(vocab, d), heads
        self.register_buffer("pos", torch.randn(9, d))  # the same in every member (seeded below)
        self.qkv, self.out, self.ln = nn.Linear(d, 3 * d), nn.Linear(d, d, bias=False), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        b, s = ids.shape
        x = self.emb(ids) + self.pos[:s]
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ v
        x = self.ln(x + self.out(att.transpose(1, 2).reshape(b, s, -1)))
        return self.head(x + self.ffn(x))[:, -1]


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 3, padding=2, dilation=2, groups=2)
        self.gn = nn.GroupNorm(2, 8)
        self.bn = nn.BatchNorm1d(8, affine=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.gn(self.conv1(x)))).amax(-1))


class SeqFirst(nn.Module):
    """Batch in dim 1 (a sequence-first layout): folding splits its rows wrongly, the check must see it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):  # x (B, S, 6)
        return self.fc(x.transpose(0, 1)).transpose(0, 1).mean(1)


def _members(make, n=3):
    out = []
    for i in range(n):
        torch.manual_seed(0)  # one plain-buffer value for all
        m = make()
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(torch.randn_like(p) * (0.5 if name.endswith("weight") else 0.2) + (1.0 if "gn" in name else 0))
            for name, b in m.named_buffers():
                if name.endswith("running_mean"):
                    b.normal_()
                if name.endswith("running_var"):
                    b.uniform_(0.5, 2.0)
        out.append(m.eval())
    return out


class ChannelMixer(nn.Module):
    """A softmax over the channels: the channel fold mixes the members there, the batch fold does not."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).softmax(1).mean((2, 3)))


def _folded_twice(ens, members, combine, x):
    """First call: vmap's output, the folded one checked against it; second: the folded one."""
    _check(ens, members, combine, x)
    group = ens._groups[0]
    _check(ens, members, combine, x)
    return group


@pytest.mark.parametrize("make, x, served", [
    (_cnn, lambda: torch.randn(5, 3, 9, 7), "channel fold"),
    (SmallMLP, lambda: torch.randn(2, 3, 5, 5), "batch fold"),
    (TinyEncoder, lambda: torch.randint(0, 23, (4, 9)), "batch fold"),
    (GroupNormNet, lambda: torch.randn(3, 4, 11), "channel fold"),
    (ChannelMixer, lambda: torch.randn(2, 3, 6, 5), "batch fold"),
], ids=["cnn-bn", "mlp", "encoder-tied", "conv1d-groupnorm", "channel-softmax"])
def test_folded_group_matches_loop(make, x, served):
    members = _members(make) if make is not _cnn else [_cnn() for _ in range(3)]
    ens = ks.ensemble(members, "mean", batched=True)
    assert ens.fold_reasons == [""]
    x1 = x()
    group = _folded_twice(ens, members, "mean", x1)
    assert ens.served_by(x1) == [served]
    x2 = x1[:1]  # another shape: checked again before it is served folded
    _check(ens, members, "mean", x2)
    assert len(group.folded_ok) == 2 and ens.served_by(x2) == [served]


def test_folded_group_sees_weights_written_through_members():
    members = _members(TinyEncoder)
    ens = ks.ensemble(members, "max", batched=True)
    ids = torch.randint(0, 23, (2, 7))
    _folded_twice(ens, members, "max", ids)
    with torch.no_grad():
        members[2].ln.weight.mul_(-3.0)
        members[0].emb.weight.add_(1.0)  # tied: the head sees it too
    _check(ens, members, "max", ids)
    cnn = [_cnn() for _ in range(2)]
    ens = ks.ensemble(cnn, "mean", batched=True)
    x = torch.randn(2, 3, 6, 6)
    _folded_twice(ens, cnn, "mean", x)
    with torch.no_grad():
        cnn[1].bn.running_var.mul_(4.0)  # BatchNorm's cached scale and shift are recomputed
    _check(ens, cnn, "mean", x)
    mixer = _members(ChannelMixer, 3)  # served by the batch fold, whose BatchNorm keeps scale / shift
    ens = ks.ensemble(mixer, "mean", batched=True)
    x = torch.randn(2, 3, 6, 5)
    _folded_twice(ens, mixer, "mean", x)
    assert ens.served_by(x) == ["batch fold"]
    with torch.no_grad():
        mixer[1].bn.weight.mul_(-2.0)  # a parameter: it keeps its own version counter, not the stack's
        mixer[2].conv.weight.mul_(3.0)
    _check(ens, mixer, "mean", x)


def test_fold_check_keeps_vmap_where_folding_is_wrong():
    members = _members(SeqFirst)
    ens = ks.ensemble(members, "mean", batched=True)
    assert ens.fold_reasons == [""]  # every layer has a rule, but the batch is not in dim 0
    x = torch.randn(4, 3, 6)
    group = _folded_twice(ens, members, "mean", x)
    assert list(group.folded_ok.values()) == [-1] and ens.served_by(x) == ["vmap"]


def test_not_folded_reasons():
    attn = [nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval() for _ in range(2)]
    ens = ks.ensemble(attn, "mean", batched=True)
    assert "MultiheadAttention holds parameters and submodules" in ens.fold_reasons[0] or \
        "has no folding rule" in ens.fold_reasons[0]
    _check(ens, attn, "mean", torch.randn(2, 5, 8))
    diff = _members(TinyEncoder, 2)
    with torch.no_grad():
        diff[1].pos.add_(1.0)
    ens = ks.ensemble(diff, "mean", batched=True)
    assert ens.fold_reasons == ["batch fold: buffer pos differs between the members; "
                                "channel fold: no convolution (the channel fold is for convolutional models)"]
    _check(ens, diff, "mean", torch.randint(0, 23, (2, 4)))
    hooked = [_cnn(), _cnn()]
    hooked[0].fc.register_forward_hook(lambda mod, i, o: o * 2)
    ens = ks.ensemble(hooked, "mean", batched=True)
    assert ens.fold_reasons == ["batch fold: fc has forward hooks; channel fold: fc has forward hooks"]
    assert ks.ensemble([_cnn(), _cnn()], "mean", batched=True, fold=False).fold_reasons == ["fold=False"]


def test_hugging_face_bert_folds():
    """BertModel's position ids are one row shared by the batch: each member's lookup is repeated."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=20)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel(cfg, add_pooling_layer=False)

        def forward(self, ids):
            return self.bert(input_ids=ids).last_hidden_state.mean(1)

    members = [Pooled().eval() for _ in range(3)]
    ens = ks.ensemble(members, "mean", batched=True)
    assert ens.fold_reasons == [""]
    group = _folded_twice(ens, members, "mean", torch.randint(0, 50, (3, 11)))
    _folded_twice(ens, members, "mean", torch.randint(0, 50, (1, 11)))  # batch 1: ids and position ids alike
    assert list(group.folded_ok.values()) == [0, 0] and group.folds[0].dim == 0  # no conv: the batch fold only


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_channel_fold_matches_loop_and_sees_weight_writes(dtype):
    """On a GPU the channel fold runs channels_last with its own copies of the Conv2d weights: a
    write through a member's weight must reach them, and a captured replay gives the same answer."""
    members = [m.cuda().to(dtype) for m in _members(_cnn, 4)]
    ens = ks.ensemble(members, "softmax-mean")
    x = torch.randn(3, 3, 9, 7, device="cuda", dtype=dtype)
    # cuDNN's fp32 convolutions run TF32 by default (torch.backends.cudnn.allow_tf32), and the
    # grouped convolution is another kernel than the members' own
    tol = dict(rtol=1e-3, atol=2e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)

    def check():
        with torch.no_grad():
            got, want = ens(x), _loop(members, "softmax-mean", x)
        torch.testing.assert_close(got, want, **tol)
        return got

    check()
    check()
    assert ens.served_by(x) == ["channel fold"]
    with torch.no_grad():
        members[2].conv.weight.mul_(-1.5)
    got = check()
    g = ks.capture(ens, x)
    torch.testing.assert_close(g(x), got, **tol)
